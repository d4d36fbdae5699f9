"""The stage registry: each stage is declared once, in the package that owns it.

A stage is one function ``fn(cfg: Config, root: Path) -> dict`` and one
:class:`Stage` declaration next to it, in its package's ``stage.py``
(``onevision/data/stage.py`` declares ``prepare``, ``validate`` and ``split``;
``onevision/generative/stage.py`` the generative stages, ...). The declaration
names the function, the config keys it reads, its inputs and outputs, its
plots and metrics and what its MLflow run carries. Everything else is read
from the declarations:

* ``dvc.yaml`` is generated from them (``onevision stage dvc-yaml``,
  :mod:`onevision.stagegraph`: code deps are the function's import closure,
  params the keys it reads and their profile and override layers);
* ``onevision stage run NAME`` (DVC's command) runs the function and writes its
  metrics to ``metrics/<stage>.json``;
* the Prefect retrain flow runs them in pipeline order (:data:`STAGE_MODULES`,
  then declaration order) and logs each stage's params and artifacts to MLflow.

Stages know nothing of Prefect or MLflow. To add a stage: write its function
and its ``Stage(...)`` in its package's ``stage.py`` (a new package: add that
module to :data:`STAGE_MODULES`), and its config section (``config.py``,
``params.yaml``); then run ``onevision stage dvc-yaml``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from onevision import atomic, paths
from onevision.config import Config

StageFn = Callable[[Config, Path], dict[str, Any]]

# Declaring modules in pipeline order; within a module, stages run in the order they are declared.
# ``stage run NAME`` imports them in this order until it finds NAME, so a data stage never imports torch.
STAGE_MODULES: tuple[str, ...] = (
    "onevision.data.stage",  # prepare, validate, split
    "onevision.encoder.stage",  # align_encoder
    "onevision.vrq.stage",  # vrq
    "onevision.mca.stage",  # mca
    "onevision.generative.stage",  # pretrain, sft, dpo, calibrate_pruning
    "onevision.comparison.stage",  # evaluate
)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, as DVC, the CLI, the flow and MLflow see it.

    ``run`` is ``"module:function"`` (imported only when the stage runs). ``reads`` are the config keys
    the function reads: a section (``"data"``) or a key of one (``"generative.model"``); DVC reruns the
    stage when one of them changes in params.yaml, in the active profile or in the overrides. ``deps``
    are the data and models it reads, ``outs`` what it writes besides ``metrics/<name>.json`` (added for
    every stage), ``plots`` and ``metrics`` DVC's plot and metric files it writes, ``artifacts`` further
    files its MLflow run carries (besides its metrics JSON, its ``reports/<name>.md`` and its plots).
    """

    name: str
    run: str
    reads: tuple[str, ...]
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    doc: str = ""

    @property
    def module(self) -> str:
        return self.run.split(":")[0]

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections behind :attr:`reads`, in order, each once."""
        return tuple(dict.fromkeys(key.split(".")[0] for key in self.reads))

    @property
    def metrics_file(self) -> str:
        return paths.metrics_file(self.name).as_posix()

    @property
    def mlflow_artifacts(self) -> tuple[str, ...]:
        """Files its MLflow run carries beyond the metrics JSON and the stage report."""
        return tuple(dict.fromkeys((*self.plots, *self.artifacts)))

    def function(self) -> StageFn:
        module, func = self.run.split(":")
        return getattr(importlib.import_module(module), func)


def _declared(module: str) -> tuple[Stage, ...]:
    stages = getattr(importlib.import_module(module), "STAGES", None)
    if not stages or not all(isinstance(s, Stage) for s in stages):
        raise TypeError(f"{module} must declare STAGES, a tuple of onevision.stages.Stage")
    return tuple(stages)


@cache
def declarations() -> dict[str, Stage]:
    """Every stage, name -> declaration, in pipeline order (imports every declaring module)."""
    found: dict[str, Stage] = {}
    for module in STAGE_MODULES:
        for stage in _declared(module):
            if stage.name in found:
                raise ValueError(f"stage {stage.name!r} is declared twice ({module} and {found[stage.name].module})")
            found[stage.name] = stage
    return found


def stage_names() -> tuple[str, ...]:
    """The pipeline's stages in order."""
    return tuple(declarations())


def declaration(name: str) -> Stage:
    """The declaration of ``name``, importing declaring modules in order only until it is found."""
    for module in STAGE_MODULES:
        for stage in _declared(module):
            if stage.name == name:
                return stage
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(stage_names())}")


def write_metrics(root: Path, stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    path = Path(root) / paths.metrics_file(stage)
    atomic.write_json(path, metrics)
    return metrics


def stage_function(name: str) -> StageFn:
    return declaration(name).function()


def run_stage(name: str, cfg: Config, root: str | Path = ".") -> dict[str, Any]:
    """Run one stage and write its metrics JSON.

    Under torchrun (``distributed.nproc_per_node`` > 1) every process runs the stage data-parallel and
    rank 0 alone writes its outputs and metrics.
    """
    t0 = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        metrics = write_metrics(Path(root), name, stage_function(name)(cfg, Path(root)))
        write_resources(Path(root), name, time.perf_counter() - t0)
        return metrics
    from onevision import distributed  # lazy: torch, only a torchrun process pays for it here

    world = distributed.init_from_env()
    metrics = {**stage_function(name)(cfg, Path(root)), "processes": world.size}
    distributed.shutdown()
    if not world.is_main:
        return metrics
    write_resources(Path(root), name, time.perf_counter() - t0)
    return write_metrics(Path(root), name, metrics)


def write_resources(root: Path, stage: str, seconds: float) -> None:
    """``.onevision/resources/<stage>.json``: this run's wall time and the stage process's peak RSS (local state beside the
    metrics, which stay reproducible; the benchmark page reads it). Rank 0's process under torchrun."""
    atomic.write_json(Path(root) / paths.RESOURCES / f"{stage}.json", {"stage": stage, "seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb()})


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB: ``VmHWM`` of /proc/self/status (its own address space; ``ru_maxrss``
    would report the parent's peak when that was higher, since Linux keeps it across fork and exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def read_resources(root: Path) -> dict[str, dict[str, Any]]:
    """The recorded resources of every stage that has run in ``root`` (see :func:`write_resources`)."""
    folder = Path(root) / paths.RESOURCES
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out
