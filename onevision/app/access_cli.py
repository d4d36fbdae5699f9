"""`onevision access setup | check`: the team's MLflow accounts and per-model permissions, from an admin's shell.

Registered in onevision/app/cli.py as the ``access`` group. Both commands are idempotent: ``check`` only
reads; ``setup`` creates what is missing (accounts, the two registered models, grants) and leaves what is
right alone, never changing an existing account's password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onevision.app.common import fail, load_project
from onevision.app.options import RootOpt
from onevision.registry.access import setup_access
from onevision.registry.model_registry import PromotionError
from onevision.tracking import tracking_uri

access_app = typer.Typer(help="MLflow accounts and permissions of a team (a shared MLflow server with authentication).",
                         no_args_is_help=True)

ServiceOpt = Annotated[str, typer.Option("--service", help="The service account retrain flows and workers run as.")]
ReaderOpt = Annotated[list[str] | None, typer.Option("--reader", help="A read-only account (repeatable).")]


def _run(root: Path, service: str, readers: list[str] | None, apply: bool) -> None:
    cfg = load_project(root, None, None)
    uri = tracking_uri(root.resolve(), cfg.tracking.tracking_uri)
    try:
        rows = setup_access(uri, served=cfg.registry.model_name, candidates=cfg.registry.candidates, service=service,
                            reviewers=list(cfg.registry.reviewers), readers=list(readers or []), apply=apply)
    except PromotionError as exc:
        fail(str(exc))
    width = max(len(r.subject) for r in rows)
    for r in rows:
        typer.echo(f"{r.state:<8} {r.subject:<{width}}  {r.detail}")
    bad = [r for r in rows if r.state in ("missing", "wrong")]
    typer.echo(f"\n{cfg.registry.candidates}: candidates (service account writes); {cfg.registry.model_name}: served "
               f"(reviewers {', '.join(cfg.registry.reviewers)} write); everyone else reads")
    if bad:
        typer.secho(f"{len(bad)} to fix: `onevision access setup --service {service}"
                    + "".join(f" --reader {r}" for r in readers or []) + "` as an MLflow admin", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@access_app.command()
def setup(service: ServiceOpt, reader: ReaderOpt = None, root: RootOpt = Path(".")) -> None:
    """Create the accounts (registry.reviewers, --service, --reader), both registered models and their grants.

    Run it with an MLflow admin's MLFLOW_TRACKING_USERNAME/PASSWORD. A new account's first password is read from
    $ONEVISION_PASSWORD_<USER> (e.g. ONEVISION_PASSWORD_ML_REVIEWER); it is never printed. Running it again changes nothing.
    """
    _run(root, service, reader, apply=True)


@access_app.command()
def check(service: ServiceOpt, reader: ReaderOpt = None, root: RootOpt = Path(".")) -> None:
    """Say, without changing anything, whether the accounts and grants are as `setup` makes them (exit 1 if not)."""
    _run(root, service, reader, apply=False)
