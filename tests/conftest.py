"""Session-wide hooks: the drill log (tests/drill.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests import drill

_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" or report.outcome != "passed":  # a setup error or failure counts as the test's outcome
        if _OUTCOMES.get(report.nodeid) not in ("failed",):
            _OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("ONEVISION_DRILL_LOG")
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"counts": dict(drill.COUNTS), "outcomes": _OUTCOMES}, indent=2, sort_keys=True))
    tmp.replace(path)
