"""The one way to build a project for a test: ``build_project(root, kind, profile=..., overrides=[...])``.

A project is a folder with a params.yaml, plus what its kind of test needs:

=================  ==========================================================================================
kind               what ``root`` holds
=================  ==========================================================================================
``defaults``       the default params.yaml (tests/support/defaults.py); nothing built
``checkout``       the code, the default params.yaml and dvc.yaml, as a git + DVC repository with a local
                   remote: what the flow, DVC and the command line run in
``demo``           the demo builder's shop (onevision.data.demo) as the validated tables, split
``stand-in``       stage prepare's shop as the validated tables, split; a saved, untrained encoder and random
                   unique SIDs standing in for stages align_encoder and vrq (for the generative stages)
``synthetic``      a shop of five shapes (tests/support/synthetic_shop.py) as validated tables, split; its
                   own small params.yaml; no encoder (the drift monitor's pixel fallback)
``tiny-trained``   a ``knn`` bundle's artifacts and good metrics, reviewers alice and bob
                   (tests/support/tiny_trained.py): promotion and serving, in seconds
=================  ==========================================================================================

``profile`` and ``overrides`` (``section.key=value``) are recorded in params.yaml as ``onevision retrain
--profile P --set k=v`` records them, so ``Project.cfg`` is what a command run in the project loads. Each
kind builds the same bytes from the same arguments (seeds included): tests compare numbers across builds.
The tiers' fixtures are thin wrappers: ``project`` (tests/code), ``make_project`` and ``small_project``
(tests/integration), ``demo_project`` (tests/model).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from onevision import paths
from onevision.config import PARAMS_FILE, Config, load_config
from onevision.pipeline import write_run_params
from tests import REPO
from tests.support import synthetic_shop
from tests.support.defaults import write_defaults
from tests.support.tiny_trained import make_tiny_project

# A checkout holds what the pipeline needs: code (dvc.yaml hashes it), params, stage graph, DVC config;
# params.yaml and dvc.yaml as their defaults, not as the last retrain in this checkout left them (defaults.py).
CHECKOUT_FILES = ("prefect.yaml", ".dvcignore", ".gitignore")
CHECKOUT_DEFAULT_FILES = ("params.yaml", "dvc.yaml")
CHECKOUT_DIRS = ("onevision", "flows", "tasks")

# The small profile, shrunk so that the whole retrain flow takes a few minutes on 2 cores.
TINY_FLOW = [
    "data.n_items=800",
    "data.n_users=150",
    "data.n_queries=2500",
    "encoder.epochs=3",
    "vrq.codebook_sizes=[64, 32, 16]",
    "vrq.epochs=5",
    "mca.recall_k=200",
    "mca.prerank_k=50",
    "generative.pretrain.epochs=2",
    "generative.sft.epochs=1",
    "generative.dpo.epochs=1",
    "generative.decode.beam_width=100",
    "evaluate.latency_queries=20",
    "evaluate.warmup=5",
    "evaluate.bootstrap=50",
    "pruning.visual_keep_mass=[1.0]",
    "pruning.beam_margin=[null, 2.0]",
    "pruning.level_beam_widths=[null]",
    "pruning.val_queries=100",
    "pruning.test_queries=100",
    "pruning.latency_queries=10",
    "pruning.warmup=2",
]

# The small profile shrunk for a "stand-in" project: the generative stages in seconds.
TINY_STAND_IN = [
    "data.n_items=120", "data.n_users=20", "data.n_queries=600", "data.n_brands=6",
    "generative.model.d_model=32", "generative.model.n_heads=2", "generative.model.n_enc_layers=1", "generative.model.n_dec_layers=1",
    "generative.model.history_len=3", "generative.decode.beam_width=10", "generative.decode.probe_queries=30",
    "generative.pretrain.epochs=2", "generative.sft.epochs=1", "generative.dpo.epochs=1", "generative.threads=1",
]


@dataclass
class Project:
    """A built project: its ``root``, its ``cfg`` (loaded from root/params.yaml when first read) and, for the
    ``demo`` kind, the demo builder's ``tables``."""

    root: Path
    tables: dict[str, pd.DataFrame] | None = None

    @cached_property
    def cfg(self) -> Config:
        return load_config(self.root / PARAMS_FILE)


def build_project(root: Path, kind: str = "defaults", *, profile: str | None = None, overrides: Sequence[str] = (),
                  **options) -> Project:
    """Build a project of ``kind`` in ``root`` (created when missing). ``options`` go to the kind:
    ``n_queries`` and ``seed`` for ``synthetic``."""
    if kind not in KINDS:
        raise ValueError(f"unknown project kind {kind!r}; kinds: {', '.join(KINDS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return KINDS[kind](root, profile, list(overrides), **options)


def _record_run(root: Path, profile: str | None, overrides: list[str]) -> None:
    """The profile and overrides written into root/params.yaml, as `onevision retrain` writes them."""
    if profile is not None or overrides:
        write_run_params(root, profile, overrides, replace_trained=True)


def _defaults(root: Path, profile: str | None, overrides: list[str]) -> Project:
    write_defaults(root)
    _record_run(root, profile, overrides)
    return Project(root)


def _git(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def _checkout(root: Path, profile: str | None, overrides: list[str]) -> Project:
    if profile is not None or overrides:
        raise ValueError("a checkout is committed with the default params.yaml: pass the profile and overrides to the retrain")
    write_defaults(root, CHECKOUT_DEFAULT_FILES)
    for name in CHECKOUT_FILES:
        shutil.copy2(REPO / name, root / name)
    for name in CHECKOUT_DIRS:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    bin_dir = Path(sys.executable).parent
    _git(["git", "init", "-q", "-b", "main"], root)
    _git([str(bin_dir / "dvc"), "init", "-q"], root)
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
    _git(["git", "add", "-A"], root)
    _git(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "init"], root)
    return Project(root)


def _demo(root: Path, profile: str | None, overrides: list[str]) -> Project:
    from onevision.data.demo import build_demo
    from onevision.data.stage import split
    from onevision.data.tables import write_tables

    project = _defaults(root, profile, overrides)
    project.tables = build_demo(project.cfg, progress=False)
    write_tables(project.tables, root / paths.VALIDATED)
    split(project.cfg, root)
    return project


def _stand_in(root: Path, profile: str | None, overrides: list[str]) -> Project:
    import torch

    from onevision.data.stage import prepare, split
    from onevision.encoder.api import ENCODER_DIR, ImageEncoder
    from onevision.encoder.model import EncoderNet, EncoderSpec

    project = _defaults(root, profile, overrides)
    cfg = project.cfg
    prepare(cfg, root)
    shutil.copytree(root / paths.PREPARED, root / paths.VALIDATED)  # stand-in for stage validate
    split(cfg, root)
    torch.manual_seed(0)
    ImageEncoder(EncoderNet(EncoderSpec(embed_dim=16, width=8, hidden_dim=16, token_grid=2))).save(root / ENCODER_DIR)
    items = pd.read_parquet(root / paths.VALIDATED / "items.parquet")["item_id"].to_numpy()
    rng = np.random.default_rng(0)
    codes = np.array([(a, b, c) for a in range(8) for b in range(4) for c in range(5)])[rng.permutation(160)[: len(items)]]
    table = pd.DataFrame({"item_id": items, **{f"code_{i}": codes[:, i] for i in range(3)}})
    (root / "data" / "sids").mkdir(parents=True)
    table.to_parquet(root / "data" / "sids" / "sid_table.parquet", index=False)  # stand-in for stage vrq
    return project


def _synthetic(root: Path, profile: str | None, overrides: list[str], *, n_queries: int = 1200, seed: int = 0) -> Project:
    (root / PARAMS_FILE).write_text(yaml.safe_dump(synthetic_shop.PARAMS, sort_keys=False))
    _record_run(root, profile, overrides)
    synthetic_shop.write_shop(root, n_queries=n_queries, seed=seed)
    return Project(root)


def _tiny_trained(root: Path, profile: str | None, overrides: list[str]) -> Project:
    make_tiny_project(root)
    _record_run(root, profile, overrides)
    return Project(root)


KINDS: dict[str, Callable[..., Project]] = {
    "defaults": _defaults,
    "checkout": _checkout,
    "demo": _demo,
    "stand-in": _stand_in,
    "synthetic": _synthetic,
    "tiny-trained": _tiny_trained,
}
