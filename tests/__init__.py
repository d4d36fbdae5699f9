"""The test suite. ``REPO``: the repository root, for tests that read or copy its files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
