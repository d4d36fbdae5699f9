"""What every command of the ``onevision`` CLI shares: logging, failing with a clear line and an exit code,
opening the project (:class:`~onevision.project.Project`, once per command) or reading only its configuration."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from onevision import redact
from onevision.app.entrypoints import FlowUnavailable, load_flow
from onevision.config import PARAMS_FILE, Config, ConfigError
from onevision.project import Project, read_config
from onevision.storage.s3 import StoreError, describe_store_error
from onevision.tracking import describe_tracking_error


def setup_logging(verbose: bool = False) -> None:
    redact.install()  # credentials from the environment never reach a log line
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        # The Prefect client logs every HTTP request to its API at INFO, and faiss's loader each SIMD build it
        # tries ("Could not load library with AVX512 support ... ModuleNotFoundError"): noise, not news.
        for noisy in ("httpx", "httpcore", "faiss.loader"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


# Exit codes every command shares: 1 a failed run or refused decision, 2 bad input or usage, 4 infrastructure
# (MLflow tracking server, object store) unavailable after the configured retries: retry later, nothing was decided.
EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 1, 2, 4


def fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.secho(f"error: {redact.redact(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def infrastructure_error(exc: BaseException) -> str | None:
    """One line when ``exc`` is an unavailable tracking server or object store (after retries), else None."""
    if isinstance(exc, StoreError):  # ArtifactStoreError included: its message already names the cause
        return str(exc)
    return describe_store_error(exc) or describe_tracking_error(exc)


def fail_run(what: str, exc: BaseException) -> None:
    """A run that raised: exit 4 with the cause when infrastructure was down, else exit 1 with the error."""
    cause = infrastructure_error(exc)
    if cause is not None:
        fail(f"{what} failed, infrastructure unavailable: {cause}", code=EXIT_INFRA)
    fail(f"{what} failed: {exc}", code=EXIT_FAILED)


def project_config(root: Path, profile: str | None = None):
    """The project's config when ``root`` has a params.yaml, else the defaults (data commands work anywhere)."""
    return load_project(root, profile, None) if (root / PARAMS_FILE).exists() else Config()


def load_project(root: Path, profile: str | None, overrides: list[str] | None) -> Config:
    """The project's config alone (commands that never reach MLflow, and the checks before a flow starts)."""
    try:
        return read_config(root, profile, overrides or [])
    except ConfigError as exc:
        fail(str(exc))


def open_project(root: Path, profile: str | None = None, overrides: list[str] | None = None) -> Project:
    """The project at ``root``, opened once for the command and handed down; a config error ends it (exit 2)."""
    try:
        return Project.open(root, profile, overrides or [])
    except ConfigError as exc:
        fail(str(exc))


def project_flow(entrypoint: str):
    """The Prefect flow of ``entrypoint`` (``entrypoints.DRIFT``, ...) from the repository's flows/, loaded as a
    worker loads it; a missing or broken flow file ends the command with one line naming what to do."""
    try:
        return load_flow(entrypoint)
    except FlowUnavailable as exc:
        fail(str(exc))


class _WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, without its traceback or stack."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def console_without_tracebacks() -> None:
    """Prefect's console handler, and the terminal handler of :func:`setup_logging` that Prefect's records reach,
    print a failed task's traceback (an object store down after the task's retries, a webhook that refused the
    alert): one line on the console instead; the flow run's log on the Prefect server keeps the traceback."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect"))]
    for logger in loggers:  # Prefect attaches its console handler to its own loggers ("prefect", "prefect.task_runs", ...)
        for handler in logger.handlers:
            console = type(handler).__name__ == "PrefectConsoleHandler" or type(handler) is logging.StreamHandler  # setup_logging's
            if console and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))
