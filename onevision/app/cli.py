"""The `onevision` command line: the commands, gathered from their modules, and the console entry point.

Each command group keeps its commands in its own ``*_cli`` module; heavy libraries (torch, prefect, mlflow,
evidently) are imported inside the commands that need them, so `onevision --help` answers at once.
"""

from __future__ import annotations

import os
import sys

import typer

from onevision import redact
from onevision.app.access_cli import access_app
from onevision.app.common import EXIT_INFRA, EXIT_USAGE, infrastructure_error
from onevision.app.data_cli import data_app
from onevision.app.evaluation_cli import evaluate_command, evaluate_sharded_command
from onevision.app.monitoring_cli import drift_command
from onevision.app.registry_cli import commands as registry_commands
from onevision.app.retrain_cli import retrain_command
from onevision.app.serving_cli import commands as serving_commands
from onevision.app.stage_cli import config_app, stage_app
from onevision.registry.access import explain_denied, is_denied

app = typer.Typer(
    help="OneVision: train, evaluate, promote and monitor a generative vision-search model.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
# `onevision --help` lists them in this order.
app.command("retrain")(retrain_command)
app.command("evaluate-sharded")(evaluate_sharded_command)
app.command("evaluate")(evaluate_command)
app.command("drift")(drift_command)
app.add_typer(data_app, name="data")
app.add_typer(stage_app, name="stage")
app.add_typer(config_app, name="config")
app.add_typer(registry_commands)  # promote, approve, reject, rollback, models, audit
app.add_typer(serving_commands)  # search, serve
app.add_typer(access_app, name="access")


def main() -> None:
    """The console entry point: a command that meets an unavailable tracking server or object store (after the
    configured retries) ends with one line and exit 4, not a traceback; any other error is left as it is."""
    try:
        app(prog_name="onevision")
    except Exception as exc:
        cause = infrastructure_error(exc)
        if cause is None:
            denied = access_denied(exc)
            if denied is None:
                raise
            typer.secho(f"error: {redact.redact(denied)}", fg=typer.colors.RED, err=True)
            sys.exit(EXIT_USAGE)
        typer.secho(f"error: infrastructure unavailable: {redact.redact(cause)}", fg=typer.colors.RED, err=True)
        sys.exit(EXIT_INFRA)


def access_denied(exc: BaseException) -> str | None:
    """One line for the MLflow server refusing this caller (401/403) anywhere in a command, else None."""
    status = is_denied(exc)
    if status is None:
        return None
    return explain_denied(status, user=os.environ.get("MLFLOW_TRACKING_USERNAME"), action="a request of this command",
                          model="(see the command)", needed="a permission",
                          remedy="`onevision access check --service SERVICE` (as an admin) shows who may do what")


if __name__ == "__main__":  # pragma: no cover
    main()
