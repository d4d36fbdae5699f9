"""Where each stage reads and writes, relative to the project root.

The stage declarations (``Stage(...)`` in each package's ``stage.py``) name the same
paths as deps and outs, and ``dvc.yaml`` is generated from those.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
PREPARED = DATA / "prepared"  # stage prepare: canonical tables, never modified afterwards
VALIDATED = DATA / "validated"  # stage validate: rows that passed every rule
QUARANTINE = DATA / "quarantine"  # stage validate: rejected rows with the failing rule
SPLITS = DATA / "splits"  # stage split: train/ val/ test/ query tables
METRICS = Path("metrics")  # one <stage>.json per stage
REPORTS = Path("reports")  # human-readable reports (markdown, HTML)
PLOTS = Path("plots")
MODELS = Path("models")
PRUNING = MODELS / "pruning"  # stage calibrate_pruning: the chosen pruning operating point
RESOURCES = Path(".onevision") / "resources"  # <stage>.json: the last run's wall time and peak memory (local state, not DVC)


def metrics_file(stage: str) -> Path:
    return METRICS / f"{stage}.json"
