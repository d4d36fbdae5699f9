"""The policy tier: tests of the repository rather than of behaviour (layers, lazy imports, signatures, the
docs' code and paths, prefect.yaml and infra/ files, the committed run state). Every test here is marked
``policy`` (``pytest -m policy`` runs just them); ``make test`` runs them with the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.policy)
