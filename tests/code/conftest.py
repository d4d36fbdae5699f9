"""Fixtures shared by the unit tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.projects import build_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root holding the default params.yaml (nothing built): ``build_project``'s "defaults"."""
    return build_project(tmp_path).root
