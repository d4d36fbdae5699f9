"""The reliability drill's table (benchmarks/drill.py): failures land in their zero-column, selectors exist."""

from __future__ import annotations

import importlib.util
import sys

from tests import REPO
from tests.support.markdown_tables import has_row

spec = importlib.util.spec_from_file_location("drill_bench", REPO / "benchmarks" / "drill.py")
drill = importlib.util.module_from_spec(spec)
sys.modules["drill_bench"] = drill  # dataclasses look their module up
spec.loader.exec_module(drill)


def test_every_scenario_names_test_files_that_exist():
    for sc in drill.SCENARIOS:
        for selector in sc.tests:
            assert (REPO / selector.split("::")[0]).is_file(), selector


def test_a_failed_test_counts_in_its_scenarios_zero_column():
    fuzz = "tests/code/test_input_fuzz.py::test_k_is_bounded_or_refused"
    bypass = "tests/integration/test_promotion.py::test_a_champion_set_outside_the_gates_is_caught"
    log = {"counts": {"fuzz.serving": 900}, "outcomes": {fuzz: "failed", bypass: "passed"}}
    rows = {r["scenario"]: r for r in drill.table(log, full=False)}
    serving = next(r for name, r in rows.items() if name.startswith("fuzzed serving"))
    assert (serving["injected"], serving["handled"], serving["crashes"]) == (900, 899, 1)
    alias = next(r for name, r in rows.items() if name.startswith("champion alias"))
    assert alias["tests"] == "1/1" and alias["unauthorised promotions"] == 0
    text = drill.markdown(list(rows.values()), {"mode": "test", "when": "now", "seconds": 1, "machine": "x"})
    assert has_row(text, serving["scenario"], serving["tests"], "900", "899") and "not run" in text and "1 crashes" in text


def test_the_full_only_crash_chain_is_left_out_of_the_fast_table():
    full_only = drill.FULL_ONLY[0]
    log = {"counts": {}, "outcomes": {full_only: "failed"}}
    fast = next(r for r in drill.table(log, full=False) if r["scenario"].startswith("SIGKILL"))
    full = next(r for r in drill.table(log, full=True) if r["scenario"].startswith("SIGKILL"))
    assert not fast["ran"] and full["data lost"] == 1
