"""The `onevision` command line.

Heavy libraries (torch, prefect, mlflow, evidently) are imported inside the
commands that need them, so `onevision --help` answers at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from onevision import atomic, paths, redact
from onevision.app import entrypoints
from onevision.app.common import (
    EXIT_INFRA,
    fail,
    fail_run,
    infrastructure_error,
    load_project,
    project_config,
    project_flow,
    setup_logging,
)
from onevision.app.options import ProfileOpt, RootOpt, SetOpt
from onevision.config import PARAMS_FILE, Config, ConfigError, describe_fields, load_config
from onevision.pipeline import apply_local_state_env, stages_until, write_run_params
from onevision.stagegraph import read_params, render_dvc_yaml, sync_dvc_yaml
from onevision.stages import declaration, declarations, run_stage, stage_names
from onevision.tracking import tracking_uri

app = typer.Typer(
    help="OneVision: train, evaluate, promote and monitor a generative vision-search model.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Build, import and validate datasets.", no_args_is_help=True)
stage_app = typer.Typer(help="Run single pipeline stages (what dvc.yaml calls).", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration in params.yaml.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(stage_app, name="stage")
app.add_typer(config_app, name="config")

class RetrainStopped(BaseException):
    """SIGTERM while the retrain flow runs (a BaseException, like KeyboardInterrupt: nothing swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signal = signum


def _raise_stopped(signum: int, frame) -> None:
    raise RetrainStopped(signum)


@app.command()
def retrain(
    *,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Stop after this stage (default: run every stage).")
    ] = None,
    promote: Annotated[
        bool,
        typer.Option("--promote/--no-promote", help="Afterwards register the model and run the promotion gates; it then waits for a reviewer (docs/reviewers.md)."),
    ] = False,
    reset: Annotated[
        bool, typer.Option("--reset", help="Drop the overrides recorded in params.yaml by earlier --set (it lists what it drops).")
    ] = False,
    replace_trained: Annotated[
        bool,
        typer.Option("--replace-trained", help="Allow switching the profile or data.source while models/ holds trained models."),
    ] = False,
    push: Annotated[
        bool,
        typer.Option("--push/--no-push", help="Afterwards `dvc push` the outputs to the project's default DVC remote "
                     "(an S3 bucket on a shared stack: infra/README.md)."),
    ] = False,
    root: RootOpt = Path("."),
) -> None:
    """Run the retrain flow (Prefect) over the DVC stages, tracked in MLflow.

    The profile and --set overrides are written to params.yaml (as `dvc exp run
    --set-param` does) so DVC sees them and `dvc repro` alone reproduces the run.
    Each --set adds to the overrides recorded by earlier runs (--reset drops them).
    Unchanged stages are skipped.
    """
    setup_logging()
    root = root.resolve()
    if not (root / PARAMS_FILE).exists():
        fail(f"{root / PARAMS_FILE} not found: run from the project root or pass --root")

    try:
        stages_until(until)
        # Written before Prefect starts: config errors and refused switches fail fast, with nothing run.
        changes = write_run_params(root, profile, overrides or [], reset=reset, replace_trained=replace_trained)
    except ConfigError as exc:
        fail(str(exc))
    for key, change in changes.items():
        if key == "dropped overrides":
            typer.echo(f"params.yaml: --reset dropped {', '.join(change)}")
        elif key != "overrides":
            typer.echo(f"params.yaml: {key} {change[0]!r} -> {change[1]!r}")
    apply_local_state_env(root)
    # lazy: Prefect ~1 s only when this command runs (`onevision --help` and the light commands start at once)
    from prefect.exceptions import TerminationSignal

    retrain_flow = project_flow(entrypoints.RETRAIN)  # flows/retrain.py, the file the `retrain` deployment runs

    # SIGTERM becomes an exception: Prefect marks the run Crashed and re-delivers the signal to this handler,
    # so the process still unwinds (the running stage is stopped, Prefect's temporary server shut down)
    # instead of dying on the default action with that server left running.
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        outcomes = retrain_flow(root=str(root), until=until, promote=promote, push=push)
    except (KeyboardInterrupt, TerminationSignal, RetrainStopped) as exc:
        signum = getattr(exc, "signal", signal.SIGINT)
        fail("retrain stopped: the running stage was stopped and DVC kept none of its outputs (dvc.lock is "
              "unchanged for it); finished stages are kept, so `onevision retrain` resumes from that stage", code=128 + signum)
    except Exception as exc:  # the flow already logged the traceback
        fail_run("retrain", exc)
    typer.echo("\nstage            status     seconds")
    for o in outcomes:
        typer.echo(f"{o['stage']:<16} {'skipped' if o['skipped'] else 'ran':<9} {o['seconds']:8.1f}")
    total = sum(o["seconds"] for o in outcomes)
    typer.echo(f"{'total':<26} {total:8.1f}")
    for line in retrain_summary(root):
        typer.echo(line)

    uri = tracking_uri(root, load_config(root / PARAMS_FILE).tracking.tracking_uri)
    mlflow_hint = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"MLflow server {uri}"
    typer.echo(f"\nMLflow: {mlflow_hint}   DVC: dvc metrics show")


def retrain_summary(root: Path) -> list[str]:
    """What a retrain produced, in a few lines: OneVision vs MCA on TEST, the gates, where to look."""
    # lazy: numpy ~0.1 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.evaluation.metrics import ORDERS, ORDERS_LABELS, resolve_metric

    path = root / "metrics" / "evaluate.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    ours, base = results.get("onevision"), results.get("mca")
    lines = ["", "OneVision vs MCA on the TEST split:"]
    if ours and base:
        orders = resolve_metric(ORDERS, ours)
        for key, label in (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"), (orders, ORDERS_LABELS.get(orders, orders)), ("latency_p50_ms", "p50 ms (batch 1)")):
            a, b = ours.get(key), base.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                ratio = f"{a / b:.3f}x" if b else "-"
                lines.append(f"  {label:<26} {a:10.4g}  vs {b:10.4g}   {ratio}")
    gate = root / "reports" / "gate_report.md"
    if gate.exists():
        verdict = next((ln for ln in gate.read_text().splitlines() if ln.startswith("Verdict:")), "")
        lines.append(f"Gates: {verdict.removeprefix('Verdict: ').strip('.') or 'see the report'} ({gate})")
    else:
        lines.append("Gates: not checked yet (onevision promote, or retrain --promote)")
    lines.append(f"Report: {root / 'reports' / 'evaluate.md'}")
    html = root / "reports" / "evaluate.html"
    if html.exists():
        lines.append(f"Visual report: {html}")
    return lines


# --------------------------------------------------------------------------- stages


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
        # lazy: numpy ~0.1 s, pandas ~0.4 s, pandera ~0.6 s only when this command runs (`onevision --help` and the light commands start at once)
        from onevision.data.quarantine import ValidationFailed

        if isinstance(exc, ValidationFailed):
            typer.echo(str(exc), err=True)
            fail(f"stage '{name}' failed: data validation did not pass (report: reports/validate.md)", code=1)
        raise
    if os.environ.get("RANK", "0") == "0":  # one answer from a data-parallel run
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


def _relaunched_data_parallel(name: str, cfg: Config, root: Path) -> bool:
    """Rerun the stage in ``distributed.nproc_per_node`` processes under torchrun when configured; True when it ran."""
    # lazy: torch ~1.3 s only when this command runs (`onevision --help` and the light commands start at once)
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


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(profile: ProfileOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Print the effective configuration (params.yaml ⊕ profile ⊕ overrides) as JSON."""
    typer.echo(json.dumps(load_project(root, profile, overrides).to_dict(), indent=2))


@config_app.command("docs")
def config_docs() -> None:
    """List every parameter with its type, default and meaning."""
    for key, type_name, default, doc in describe_fields():
        typer.echo(f"{key:<32} {type_name:<22} default={default!r}\n    {doc}")


# --------------------------------------------------------------------------- data


@data_app.command("build-demo")
def data_build_demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Parquet tables.")],
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Build the Fashion-MNIST demo shop (items, views, users, queries, impressions, interactions)."""
    setup_logging()
    cfg = load_project(root, profile, overrides)
    # lazy: numpy ~0.1 s, pandas ~0.4 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.data.demo import build_demo
    from onevision.data.tables import write_tables

    tables = build_demo(cfg)
    for name, path in write_tables(tables, out).items():
        typer.echo(f"{name:<14} {len(tables[name]):>8} rows  {path}")


@data_app.command("example-catalog")
def data_example_catalog(
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write photos/, catalog.csv and queries.csv into.")],
    items: Annotated[int, typer.Option(help="Products (3 photos each).", min=8)] = 64,
    users: Annotated[int, typer.Option(help="Shoppers in the search log.", min=1)] = 20,
    queries: Annotated[int, typer.Option(help="Photo searches in the log (10 results shown each, with clicks and orders).", min=20)] = 480,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    root: RootOpt = Path("."),
) -> None:
    """Write a small example of your own catalog (colour JPEGs, catalog CSV, search log) to try the import path.

    The files have the format `onevision data import` reads (docs/own-catalog.md); the garments come
    from the Fashion-MNIST folder of params.yaml (data.fashion_mnist_dir), so nothing is downloaded.
    """
    setup_logging()
    # lazy: numpy ~0.1 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.data.example_catalog import ExampleSpec, write_example_catalog

    cfg = project_config(root)
    try:
        counts = write_example_catalog(out, cfg.data.fashion_mnist_dir, ExampleSpec(n_items=items, n_users=users, n_queries=queries, seed=seed))
    except FileNotFoundError as exc:
        fail(f"{exc}; the example garments come from Fashion-MNIST: apt-get install dataset-fashion-mnist")
    typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()) + f" written to {out}/ (photos/, catalog.csv, queries.csv)")


@data_app.command("import")
def data_import(
    *,
    catalog: Annotated[Path, typer.Option("--catalog", help="CSV: item_id, image_paths (';'-separated), category, brand, price.", exists=True, dir_okay=False)],
    images: Annotated[Path, typer.Option("--images", help="Folder holding the photos; paths in the CSVs are relative to it.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Parquet tables.")],
    queries: Annotated[Path | None, typer.Option("--queries", help="Optional query log CSV.", exists=True, dir_okay=False)] = None,
    image_size: Annotated[int | None, typer.Option(help="Resize photos to this square side (default: the project's data.image_size).")] = None,
    channels: Annotated[int | None, typer.Option(help="1 grayscale or 3 RGB (default: the project's data.image_channels).")] = None,
    profile: ProfileOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Import a catalog of your own product photos into the canonical tables (photos are not modified).

    Sizes default to the project's params.yaml (as `onevision data validate` does), so the two agree.
    """
    setup_logging()
    # lazy: numpy ~0.1 s, pandas ~0.4 s, pandera ~0.6 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.data.importer import import_catalog
    from onevision.data.tables import write_tables

    cfg = project_config(root, profile)
    image_size = image_size or cfg.data.image_size
    channels = channels or cfg.data.image_channels
    if channels not in (1, 3):
        fail("--channels must be 1 or 3")
    try:
        tables = import_catalog(catalog, images, queries_csv=queries, image_size=image_size, image_channels=channels)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for name, path in write_tables(tables, out).items():
        typer.echo(f"{name:<14} {len(tables[name]):>8} rows  {path}")


@data_app.command("validate")
def data_validate(
    *,
    path: Annotated[Path, typer.Argument(help="Folder of Parquet tables (items.parquet, views.parquet, ...).", exists=True, file_okay=False)],
    image_root: Annotated[Path | None, typer.Option(help="Folder that image_path columns are relative to.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Expected image side (default: data.image_size).")] = None,
    channels: Annotated[int | None, typer.Option(help="Expected channels 1|3 (default: data.image_channels).")] = None,
    max_bad_fraction: Annotated[float | None, typer.Option(help="Fail above this quarantined share per table (default: validate.max_bad_fraction).")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the markdown report here.")] = None,
    profile: ProfileOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Validate a dataset folder. Exit 0 when clean, 1 with the report otherwise. Never modifies the input."""
    setup_logging()
    cfg = project_config(root, profile)
    # lazy: numpy ~0.1 s, pandas ~0.4 s, pandera ~0.6 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.data.validation import validate_folder

    try:
        result = validate_folder(
            path,
            image_root=image_root,
            image_size=image_size or cfg.data.image_size,
            image_channels=channels or cfg.data.image_channels,
            check_images=cfg.validate_.check_images,
            max_bad_fraction=cfg.validate_.max_bad_fraction if max_bad_fraction is None else max_bad_fraction,
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    text = result.report_markdown()
    if report:
        atomic.write_text(report, text)
    clean = result.passed and len(result.quarantine) == 0
    typer.echo(text, err=not clean)
    if not clean:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- feature commands
# Each feature package keeps its commands in its own cli module (heavy imports inside the commands).
from onevision.app.evaluation_cli import evaluate_command  # noqa: E402
from onevision.app.monitoring_cli import drift_command  # noqa: E402
from onevision.app.registry_cli import commands as registry_commands  # noqa: E402
from onevision.app.serving_cli import commands as serving_commands  # noqa: E402


@app.command("evaluate-sharded")
def evaluate_sharded(
    *,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Dask worker processes of the local cluster (one shard each).")] = 2,
    address: Annotated[
        str | None, typer.Option("--address", help="Use a running Dask scheduler (tcp://host:8786) instead of a local cluster.")
    ] = None,
    systems: Annotated[
        str | None, typer.Option("--systems", help="Comma-separated system names (default: evaluate.systems).")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch/BLAS threads per shard.")] = 1,
    no_embed: Annotated[bool, typer.Option("--no-embed", help="Skip re-embedding the catalog (rank and score only).")] = False,
    embeddings_out: Annotated[
        Path | None, typer.Option("--embeddings-out", help="Also write the fused item embeddings to this .npz.", dir_okay=False)
    ] = None,
    root: RootOpt = Path("."),
) -> None:
    """Embed the catalog and evaluate quality with the work sharded over Dask workers (Prefect's Dask runner).

    Same merged ranked lists and quality metrics as the serial `evaluate` stage (shards are whole batches
    of it); no latency or memory measurement. Writes reports/evaluate_sharded.json.
    """
    setup_logging()
    root = root.resolve()
    if not (root / PARAMS_FILE).exists():
        fail(f"{root / PARAMS_FILE} not found: run from the project root or pass --root")
    cfg = load_project(root, None, None)
    names = [s.strip() for s in systems.split(",")] if systems else list(cfg.evaluate.systems)

    apply_local_state_env(root)
    sharded = project_flow(entrypoints.EVALUATE_SHARDED)  # flows/sharded.py, the file the `evaluate-sharded` deployment runs
    report = root / paths.REPORTS / "evaluate_sharded.json"
    try:
        out = sharded(str(root), workers=workers, address=address, systems=names, threads=threads, embed=not no_embed,
                      embeddings_out=str(embeddings_out) if embeddings_out else None, report=str(report))
    except (FileNotFoundError, ValueError) as exc:
        fail(f"evaluate-sharded: {exc}")
    typer.echo(f"\n{'system':<16} {'HR@10':>7} {'MRR':>7} {'queries':>8}")
    for name, m in out["systems"].items():
        typer.echo(f"{name:<16} {m.get('hr@10', float('nan')):>7.3f} {m.get('mrr', float('nan')):>7.3f} {m['n_queries']:>8}")
    if "embeddings" in out:
        e = out["embeddings"]
        diff = e.get("embeddings_max_abs_diff")
        typer.echo(f"\nembedded {e['views']} views of {e['items']} items in {e['shards']} shards"
                   + (f" (max |diff| vs data/embeddings/items.npz: {diff:.2e})" if diff is not None else ""))
    typer.echo(f"report: {report}")


app.command("evaluate")(evaluate_command)
app.command("drift")(drift_command)
app.add_typer(registry_commands)  # promote, approve, reject, rollback, models, audit
app.add_typer(serving_commands)  # search


def main() -> None:
    """The console entry point: a command that meets an unavailable tracking server or object store (after the
    configured retries) ends with one line and exit 4, not a traceback; any other error is left as it is."""
    try:
        app(prog_name="onevision")
    except Exception as exc:
        cause = infrastructure_error(exc)
        if cause is None:
            raise
        typer.secho(f"error: infrastructure unavailable: {redact.redact(cause)}", fg=typer.colors.RED, err=True)
        sys.exit(EXIT_INFRA)


if __name__ == "__main__":  # pragma: no cover
    main()
