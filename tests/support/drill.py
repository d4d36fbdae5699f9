"""Counters the reliability drill reads (benchmarks/drill.py): how many faults and inputs a test injected.

``count("fuzz.serving")`` inside a test adds one; with ``$ONEVISION_DRILL_LOG`` set, tests/conftest.py writes
the counters and every test's outcome to that JSON file at the end of the session. Without it, counting costs
nothing and writes nothing.
"""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()


def count(what: str, n: int = 1) -> None:
    COUNTS[what] += n
