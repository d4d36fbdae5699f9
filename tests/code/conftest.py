"""Fixtures shared by the unit tier."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import REPO


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root holding a copy of the repository's params.yaml (nothing built)."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path
