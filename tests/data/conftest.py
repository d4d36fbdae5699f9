"""Fixtures shared by the data tier: one tiny demo shop, built once per session."""

from __future__ import annotations

import pandas as pd
import pytest

from onevision.config import Config, load_config
from onevision.data.demo import build_demo
from tests.support.defaults import default_params_file

# Smaller than the `small` profile so a build takes a second or two.
TINY = ["data.n_items=400", "data.n_users=60", "data.n_queries=1500", "data.n_brands=8"]


def tiny_config(*extra: str) -> Config:
    """The small profile shrunk to TINY, plus ``extra`` overrides."""
    return load_config(default_params_file(), profile="small", overrides=[*TINY, *extra])


@pytest.fixture(scope="session")
def cfg() -> Config:
    return tiny_config()


@pytest.fixture(scope="session")
def tables(cfg: Config) -> dict[str, pd.DataFrame]:
    """The demo builder's tables for ``cfg`` (read them, do not change them: the session shares them)."""
    return build_demo(cfg, progress=False)
