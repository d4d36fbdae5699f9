"""The stage registry: name -> function, in pipeline order.

Each stage is one function ``fn(cfg: Config, root: Path) -> dict`` living in
the package it belongs to (``onevision.data.stages.prepare``, ...). It reads
its inputs and the effective config, writes its outputs under ``root`` and
returns a small metrics dict, written to ``metrics/<stage>.json``. DVC runs a
stage as ``onevision stage run NAME``; the Prefect retrain flow runs them in
``PIPELINE`` order. Stages know nothing of Prefect or MLflow.

To add a stage: write its function, add it to ``STAGES`` and ``STAGE_PARAMS``
below (functions are named as "module:function" so the CLI imports only what
it runs), and add the same stage to dvc.yaml.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onevision import atomic, paths
from onevision.config import Config

StageFn = Callable[[Config, Path], dict[str, Any]]

# Pipeline order (later stages are appended as they are built).
STAGES: dict[str, str] = {
    "prepare": "onevision.data.stages:prepare",
    "validate": "onevision.data.stages:validate",
    "split": "onevision.data.stages:split",
    "align_encoder": "onevision.encoder.stage:align_encoder",
    "vrq": "onevision.vrq.stage:vrq",
    # order: ... align_encoder, vrq, mca, pretrain, sft, dpo, calibrate_pruning, evaluate, ...
    "mca": "onevision.mca.train:mca",
    "pretrain": "onevision.generative.stages:pretrain",
    "sft": "onevision.generative.stages:sft",
    "dpo": "onevision.generative.stages:dpo",
    # before evaluate: evaluate reports the pruned model (models/pruning) beside the unpruned one
    "calibrate_pruning": "onevision.generative.calibrate:calibrate_pruning",
    "evaluate": "onevision.comparison.stage:evaluate",
}

# Sections of params.yaml each stage depends on (besides seed/profile/profiles/overrides);
# dvc.yaml lists the same, and the flow logs them as the stage run's params.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "prepare": ("data",),
    "validate": ("data", "validate"),
    "split": ("split",),
    "align_encoder": ("data", "encoder"),
    "vrq": ("vrq",),
    "mca": ("data", "mca"),
    "pretrain": ("data", "evaluate", "generative"),  # evaluate.shown: the VAL probe shows what the evaluation shows
    "sft": ("data", "evaluate", "generative"),
    "dpo": ("data", "evaluate", "generative"),
    "calibrate_pruning": ("data", "evaluate", "generative", "pruning"),
    "evaluate": ("data", "mca", "evaluate", "generative"),
}


# Files a stage writes beyond metrics/<stage>.json and reports/<stage>.md that its MLflow run carries too.
STAGE_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "align_encoder": ("plots/align_encoder.png",),
    "vrq": ("plots/vrq.png",),
    "pretrain": ("plots/pretrain.png",),
    "sft": ("plots/sft.png",),
    "dpo": ("plots/dpo.png",),
    "calibrate_pruning": ("metrics/pruning.json", "reports/pruning.md", "plots/pruning_pareto.png", "models/pruning/pruning.json"),
    "evaluate": ("reports/evaluate.html", "plots/evaluate_quality_latency.png", "plots/evaluate_per_k.png"),
}


def write_metrics(root: Path, stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    path = Path(root) / paths.metrics_file(stage)
    atomic.write_json(path, metrics)
    return metrics


def stage_function(name: str) -> StageFn:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(name: str, cfg: Config, root: str | Path = ".") -> dict[str, Any]:
    """Run one stage and write its metrics JSON.

    Under torchrun (``distributed.nproc_per_node`` > 1) every process runs the stage data-parallel and
    rank 0 alone writes its outputs and metrics.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return write_metrics(Path(root), name, stage_function(name)(cfg, Path(root)))
    from onevision import distributed  # torch: only a torchrun process pays for it at import

    world = distributed.init_from_env()
    metrics = {**stage_function(name)(cfg, Path(root)), "processes": world.size}
    distributed.shutdown()
    return write_metrics(Path(root), name, metrics) if world.is_main else metrics
