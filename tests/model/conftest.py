"""Fixtures shared by the model tier: tiny demo shops built by the real demo builder.

``demo_project`` builds a ``demo`` project (tests/support/projects.py: the demo
builder's tables as the validated ones, what stage ``validate`` passes on;
these tests are about the models), split, and runs the stages a module asks
for. Each module keeps its own sizes: the shared part is the shop and how it
is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from onevision.config import Config
from tests.support.projects import build_project

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
                                         reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")

# 300 products of the small profile's demo shop; modules add their query count and model sizes.
DEMO_SHOP = ["data.n_items=300", "data.n_users=60", "data.n_brands=10"]
NARROW_ENCODER = ["encoder.width=16", "encoder.hidden_dim=128", "encoder.embed_dim=64", "encoder.batch_size=128"]


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory) -> Callable[..., tuple[Path, Config, dict[str, Any]]]:
    """``demo_project(name, overrides, stages)`` -> (root, cfg, {stage: its metrics}): a fresh ``demo`` project
    on the small profile with ``overrides``, and the ``stages`` run in it."""
    from onevision.stages import run_stage

    def build(name: str, overrides: Sequence[str], stages: Sequence[str] = ()) -> tuple[Path, Config, dict[str, Any]]:
        project = build_project(tmp_path_factory.mktemp(name), "demo", profile="small", overrides=overrides)
        return project.root, project.cfg, {stage: run_stage(stage, project.cfg, project.root) for stage in stages}

    return build
