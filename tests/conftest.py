"""Session-wide hooks: the drill log (tests/support/drill.py), and no logging handler left on a closed stream."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tests.support import drill

_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" or report.outcome != "passed":  # a setup error or failure counts as the test's outcome
        if _OUTCOMES.get(report.nodeid) not in ("failed",):
            _OUTCOMES[report.nodeid] = report.outcome


@pytest.fixture(autouse=True)
def _no_handler_on_a_closed_stream():
    """A command run in-process (typer's CliRunner) configures logging inside the runner's streams: its
    setup_logging puts a terminal handler on the root logger, and a Prefect flow it starts binds Prefect's console
    handler, to streams the runner closes when it returns. Left there, every later log record of the session fails
    to write, and Prefect's API log handler recurses on the error (a later test then fails far from the cause).
    After each test, handlers whose stream is closed go."""
    yield
    for logger in [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]:
        for handler in list(getattr(logger, "handlers", [])):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("ONEVISION_DRILL_LOG")
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"counts": dict(drill.COUNTS), "outcomes": _OUTCOMES}, indent=2, sort_keys=True))
    tmp.replace(path)
