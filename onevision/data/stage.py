"""Data stages: prepare -> validate -> split."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from onevision import atomic, paths
from onevision.config import Config, ConfigError
from onevision.stages import Stage, write_metrics

log = logging.getLogger(__name__)

STAGES = (
    Stage("prepare", "onevision.data.stage:prepare", reads=("data",), outs=("data/prepared",),
          doc="build the canonical tables (the demo shop or your catalog import)"),
    Stage("validate", "onevision.data.stage:validate", reads=("data", "validate"), deps=("data/prepared",),
          outs=("data/validated", "data/quarantine", "reports/validate.md"),
          doc="check every row against the schemas; bad rows go to quarantine"),
    Stage("split", "onevision.data.stage:split", reads=("split",), deps=("data/validated/queries.parquet",),
          outs=("data/splits",), doc="split the queries into train / val / test"),
)


def import_inputs(cfg: Config) -> list[str]:
    """What ``prepare`` reads of an imported catalog (catalog CSV, query log, photo folder), as configured.

    These are deps of ``prepare`` in dvc.yaml (written by ``onevision stage dvc-yaml`` and ``retrain``),
    so DVC content-hashes them; paths are relative to the project root or absolute. Empty for the demo.
    """
    if cfg.data.source != "import":
        return []
    inputs = (cfg.data.import_catalog_csv, cfg.data.import_queries_csv, cfg.data.import_dir)
    return [Path(p).as_posix() for p in inputs if p]


def missing_input_deps(root: Path, cfg: Config) -> list[str]:
    """Inputs of :func:`import_inputs` that ``root/dvc.yaml``'s prepare stage does not list."""

    path = root / "dvc.yaml"
    if not path.exists():
        return []
    stage = ((yaml.safe_load(path.read_text()) or {}).get("stages") or {}).get("prepare") or {}
    deps = stage.get("deps") or []
    return [dep for dep in import_inputs(cfg) if dep not in deps]


def prepare(cfg: Config, root: Path) -> dict[str, Any]:
    """Build the canonical dataset (demo shop or a user's catalog import) under data/prepared."""
    # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas only when the stage runs
    from onevision.data.tables import write_tables

    t0 = time.perf_counter()
    if cfg.data.source == "demo":
        # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas only when the stage runs
        from onevision.data.demo import build_demo

        tables = build_demo(cfg)
    else:
        # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas, pandera only when the stage runs
        from onevision.data.importer import import_catalog
        missing = missing_input_deps(root, cfg)
        if missing:
            raise ConfigError(
                f"dvc.yaml's prepare stage does not list the imported data ({', '.join(missing)}), so DVC would "
                "not see it change; run `onevision stage dvc-yaml` (onevision retrain does it for you)"
            )
        tables = import_catalog(
            cfg.data.import_catalog_csv,
            cfg.data.import_dir,
            queries_csv=cfg.data.import_queries_csv,
            image_size=cfg.data.image_size,
            image_channels=cfg.data.image_channels,
        )
    out = root / paths.PREPARED
    write_tables(tables, out)
    metrics: dict[str, Any] = {f"rows_{name}": int(len(frame)) for name, frame in tables.items()}
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("prepare: wrote %s tables to %s in %.1f s", len(tables), out, metrics["seconds"])
    return metrics


def validate(cfg: Config, root: Path) -> dict[str, Any]:
    """Validate every table; bad rows go to quarantine; fail past the bad-fraction threshold."""
    # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas, pandera only when the stage runs
    from onevision.data.quarantine import ValidationFailed
    from onevision.data.tables import read_tables, write_tables
    from onevision.data.validation import validate_tables

    t0 = time.perf_counter()
    tables = read_tables(root / paths.PREPARED)
    result = validate_tables(
        tables,
        image_root=cfg.data.import_dir,
        image_size=cfg.data.image_size,
        image_channels=cfg.data.image_channels,
        check_images=cfg.validate_.check_images,
        max_bad_fraction=cfg.validate_.max_bad_fraction,
    )
    report = root / paths.REPORTS / "validate.md"
    atomic.write_text(report, result.report_markdown())
    quarantine_dir = root / paths.QUARANTINE
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(quarantine_dir / "quarantine.parquet") as tmp:
        result.quarantine.to_parquet(tmp, index=False)
    metrics = result.to_metrics()
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    write_metrics(root, "validate", metrics)  # written even when the stage fails
    if not result.passed:
        raise ValidationFailed(result)
    write_tables(result.clean, root / paths.VALIDATED)
    log.info("validate: passed, %d rows quarantined (report: %s)", len(result.quarantine), report)
    return metrics


def split(cfg: Config, root: Path) -> dict[str, Any]:
    """Assign every validated query to train / val / test without leakage."""
    # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas only when the stage runs
    import pandas as pd

    # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas only when the stage runs
    from onevision.data.split import ASSIGNMENT_FILE, SPLITS, check_no_leakage, split_queries

    queries = pd.read_parquet(root / paths.VALIDATED / "queries.parquet", columns=["query_id", "user_id", "ts"])
    assignment = split_queries(queries, cfg.split, cfg.seed)
    facts = check_no_leakage(assignment, cfg.split.strategy)
    out = root / paths.SPLITS
    out.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out / ASSIGNMENT_FILE) as tmp:
        assignment.to_parquet(tmp, index=False)
    counts = assignment["split"].value_counts()
    metrics: dict[str, Any] = {f"queries_{s}": int(counts.get(s, 0)) for s in SPLITS}
    metrics.update({f"users_{s}": int(assignment.loc[assignment["split"] == s, "user_id"].nunique()) for s in SPLITS})
    metrics.update(facts)
    return metrics
