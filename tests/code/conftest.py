"""Fixtures shared by the unit tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.defaults import write_defaults


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root holding the default params.yaml (tests/support/defaults.py; nothing built)."""
    return write_defaults(tmp_path)
