"""`onevision stage ...` and `onevision config ...`: the pipeline's single stages (what dvc.yaml calls) and the
configuration they read."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from onevision.app.common import fail, load_project, setup_logging
from onevision.app.options import ProfileOpt, RootOpt, SetOpt
from onevision.config import Config, describe_fields
from onevision.stagegraph import read_params, render_dvc_yaml, sync_dvc_yaml
from onevision.stages import declaration, declarations, run_stage, stage_names

stage_app = typer.Typer(help="Run single pipeline stages (what dvc.yaml calls).", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration in params.yaml.", no_args_is_help=True)


@stage_app.command("run")
def stage_run(
    name: Annotated[str, typer.Argument(help="Stage name, e.g. prepare, validate, split.")],
    root: RootOpt = Path("."),
) -> None:
    """Run one stage with the effective config of params.yaml (DVC's command for each stage)."""
    setup_logging()

    try:
        declaration(name)
    except KeyError:
        fail(f"unknown stage '{name}'; stages: {', '.join(stage_names())}")
    cfg = load_project(root, None, None)
    if _relaunched_data_parallel(name, cfg, root):
        return
    try:
        metrics = run_stage(name, cfg, root)
    except Exception as exc:
        # lazy: numpy, pandas, pandera only when this command runs
        from onevision.data.quarantine import ValidationFailed

        if isinstance(exc, ValidationFailed):
            typer.echo(str(exc), err=True)
            fail(f"stage '{name}' failed: data validation did not pass (report: reports/validate.md)", code=1)
        raise
    if os.environ.get("RANK", "0") == "0":  # one answer from a data-parallel run
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


def _relaunched_data_parallel(name: str, cfg: Config, root: Path) -> bool:
    """Rerun the stage in ``distributed.nproc_per_node`` processes under torchrun when configured; True when it ran."""
    # lazy: torch only when this command runs
    from onevision import distributed

    d = cfg.distributed
    if d.nproc_per_node == 1 or distributed.launched_by_torchrun():
        return False

    unknown = sorted(set(d.stages) - set(stage_names()))
    if unknown:
        fail(f"distributed.stages names unknown stages {', '.join(unknown)}; stages: {', '.join(stage_names())} (fix params.yaml)")
    if name not in d.stages:
        return False
    typer.echo(f"stage '{name}': {d.nproc_per_node} data-parallel processes under torchrun", err=True)
    rc = subprocess.call(distributed.torchrun_command(d.nproc_per_node, ["stage", "run", name, "--root", str(root)]))
    if rc:
        fail(f"stage '{name}' failed in one of its {d.nproc_per_node} processes (exit {rc}); the log above names the rank", code=rc)
    return True


@stage_app.command("dvc-yaml")
def stage_dvc_yaml(
    check: Annotated[bool, typer.Option("--check", help="Only compare: exit 1 when dvc.yaml differs from the generated file.")] = False,
    root: RootOpt = Path("."),
) -> None:
    """Write dvc.yaml from the stage declarations (onevision/<package>/stage.py): each stage's code deps (its
    import closure), the params it reads in the active profile and the overrides, and, for an imported catalog,
    the catalog CSV, query log and photo folder of params.yaml (`onevision retrain` does this too)."""

    path = root / "dvc.yaml"
    if not (root / "params.yaml").exists():
        fail(f"{root / 'params.yaml'} not found; run from the project root or pass --root")
    cfg = load_project(root, None, None)
    if path.exists() and render_dvc_yaml(cfg, read_params(root)) == path.read_text():
        typer.echo(f"{path}: up to date with the stage declarations and params.yaml")
        return
    if check:
        fail(f"{path}: differs from the stage declarations and params.yaml; run `onevision stage dvc-yaml`", code=1)
    sync_dvc_yaml(root, cfg)
    typer.echo(f"{path}: written from the stage declarations and params.yaml")


stage_app.command("dvc-deps", hidden=True, help="Former name of `stage dvc-yaml`.")(stage_dvc_yaml)


@stage_app.command("list")
def stage_list() -> None:
    """List the pipeline stages in order, with what each does."""

    for stage in declarations().values():
        typer.echo(f"{stage.name:<18} {stage.doc}")


@config_app.command("show")
def config_show(profile: ProfileOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Print the effective configuration (params.yaml ⊕ profile ⊕ overrides) as JSON."""
    typer.echo(json.dumps(load_project(root, profile, overrides).to_dict(), indent=2))


@config_app.command("docs")
def config_docs() -> None:
    """List every parameter with its type, default and meaning."""
    for key, type_name, default, doc in describe_fields():
        typer.echo(f"{key:<32} {type_name:<22} default={default!r}\n    {doc}")
