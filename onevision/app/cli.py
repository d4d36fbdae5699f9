"""The `onevision` command line: the commands, gathered from their modules, and the console entry point.

Each command group keeps its commands in its own ``*_cli`` module; heavy libraries (torch, prefect, mlflow,
evidently) are imported inside the commands that need them, so `onevision --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from onevision import redact
from onevision.app.common import EXIT_INFRA, infrastructure_error
from onevision.app.data_cli import data_app
from onevision.app.evaluation_cli import evaluate_command, evaluate_sharded_command
from onevision.app.monitoring_cli import drift_command
from onevision.app.registry_cli import commands as registry_commands
from onevision.app.retrain_cli import retrain_command
from onevision.app.serving_cli import commands as serving_commands
from onevision.app.stage_cli import config_app, stage_app

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
