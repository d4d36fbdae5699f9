"""The reliability drill: inject faults, hostile input and bypass attempts, and count what survived.

Runs the drill's tests (each injects one kind of fault into the real code: processes, servers, stores) with
``$ONEVISION_DRILL_LOG`` set, so they report how many faults and inputs they tried (tests/support/drill.py), and prints
one table: per scenario what was injected or tried, what was handled, and the outcomes that must stay at zero
(crashes, data lost, unauthorised promotions, false drift pages, secrets leaked). A failing test adds to its
scenario's zero-column: the scenario did not hold.

    python benchmarks/drill.py                  # fast subset (what CI runs inside `make test`)
    python benchmarks/drill.py --full           # + SIGKILL in every training stage, two retrains at once, 1,000 examples
                                                #   per fuzz property (measured: 702 s on 2 cores, partly shared)
    python benchmarks/drill.py --from-log LOG   # the table of a finished test session (.ci/run uses this)

Writes benchmarks/results/drill.md and drill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from onevision.markdown import table as markdown_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BAD = ("crashes", "data lost", "unauthorised promotions", "false drift pages", "secrets leaked")


@dataclass(frozen=True)
class Scenario:
    name: str
    bad: str  # which zero-column a failure of its tests counts in
    tests: tuple[str, ...]  # node ids or prefixes
    counter: str | None = None  # tests/support/drill.py counter of faults/inputs injected; else one per test


SCENARIOS = (
    Scenario("champion alias set through the MLflow API (the UI's \"Aliases: Add\")", "unauthorised promotions", (
        "tests/integration/test_promotion.py::test_a_champion_set_outside_the_gates_is_caught",
        "tests/code/test_promotion_cli.py::test_serve_pins_the_approved_champion_version")),
    Scenario("approval by another name, an unlisted reviewer, a typed form, a gates-failed version", "unauthorised promotions", (
        "tests/code/test_promotion_cli.py::test_naming_another_reviewer_is_refused",
        "tests/code/test_promotion_cli.py::test_the_reviewer_is_who_runs_the_command",
        "tests/code/test_promotion_cli.py::test_unknown_reviewer_is_refused",
        "tests/code/test_promotion_cli.py::test_no_reviewers_configured_blocks_approval",
        "tests/code/test_promotion_cli.py::test_approving_a_gates_failed_version_says_where_its_gate_report_is",
        "tests/integration/test_promotion.py::test_failing_gate_blocks_promotion",
        "tests/integration/test_promotion.py::test_unknown_reviewer_refused_and_reject_leaves_champion",
        "tests/integration/test_promotion_flow.py::test_cli_decision_resumes_the_paused_flow")),
    Scenario("decisions racing in separate processes (approve, reject, rollback)", "unauthorised promotions",
             ("tests/integration/test_decision_race.py",), "race.decisions"),
    Scenario("object store unreachable on a quiet day; clean traffic", "false drift pages", (
        "tests/integration/test_drift_flow.py::test_an_unreachable_store_on_a_quiet_day_is_an_infrastructure_error_not_an_alarm",
        "tests/integration/test_drift_flow.py::test_cli_exit_code_4_for_an_infrastructure_error",
        "tests/integration/test_drift_flow.py::test_clean_traffic_completes_without_alert")),
    Scenario("object store answering 503 SlowDown (transient, then persistent)", "false drift pages",
             ("tests/integration/test_store_faults.py",), "faults.object_store"),
    Scenario("MLflow tracking server answering 503 for a while, for good, or gone, under a promotion", "unauthorised promotions",
             ("tests/integration/test_tracking_faults.py",), "faults.tracking_server"),
    Scenario("two retrain flows at once in two checkouts; two `dvc push` at once to one remote", "data lost",
             ("tests/integration/test_concurrency.py",)),
    Scenario("SIGTERM of the retrain flow in a stage", "data lost", ("tests/integration/test_retrain_stop.py",)),
    Scenario("SIGKILL of every process of the flow in training stages, then resume", "data lost",
             ("tests/integration/test_crash_resume.py::test_sigkill",), "crash.kills"),
    Scenario("writer SIGKILLed in the middle of a file", "data lost", ("tests/code/test_atomic.py",)),
    Scenario("project copied elsewhere, then promoted", "data lost", ("tests/integration/test_portable_project.py",)),
    Scenario("canary credentials in the flows' environment", "secrets leaked",
             ("tests/integration/test_crash_resume.py::test_no_canary_secret_reaches_any_output", "tests/code/test_redact.py"), "canary.outputs"),
    Scenario("fuzzed serving requests (bytes, modes, sizes, bombs, user ids, k)", "crashes", (
        "tests/code/test_input_fuzz.py::test_random_bytes_are_refused_cleanly",
        "tests/code/test_input_fuzz.py::test_any_decodable_photo_becomes_the_models_input",
        "tests/code/test_input_fuzz.py::test_user_ids_are_integers_or_a_clear_refusal",
        "tests/code/test_input_fuzz.py::test_k_is_bounded_or_refused",
        "tests/code/test_input_fuzz.py::test_a_decompression_bomb_is_refused_before_decoding"), "fuzz.serving"),
    Scenario("fuzzed catalog CSVs (ids, prices, BOM, CRLF, NaN/inf/1e309)", "crashes",
             ("tests/code/test_input_fuzz.py::test_any_catalog_csv_imports_to_validation_or_a_named_error",), "fuzz.catalog"),
    Scenario("fuzzed photo paths and files (traversal, absolute, NUL, corrupt, truncated)", "crashes",
             ("tests/code/test_input_fuzz.py::test_any_photo_path_or_photo_file_imports_or_names_the_row",), "fuzz.catalog_photos"),
    Scenario("fuzzed command-line arguments", "crashes",
             ("tests/code/test_input_fuzz.py::test_any_command_line_argument_is_run_or_refused_clearly",), "fuzz.cli"),
)
FULL_ONLY = ("tests/integration/test_crash_resume.py::test_sigkill_in_every_training_stage_then_resume_gives_the_same_evaluation",
             "tests/integration/test_concurrency.py::test_two_retrains_at_once_in_two_checkouts_keep_their_own_outputs_and_runs",
             "tests/integration/test_crash_resume.py::test_sigkill_in_a_training_stage_then_resume_gives_the_same_models")


def _matches(nodeid: str, selector: str) -> bool:
    return nodeid == selector or nodeid.startswith(selector + "::") or nodeid.startswith(selector + "[") or (
        "::" in selector and nodeid.startswith(selector))


def table(log: dict, full: bool) -> list[dict]:
    outcomes, counts = log["outcomes"], log["counts"]
    rows = []
    for sc in SCENARIOS:
        ran = {n: o for n, o in outcomes.items() if any(_matches(n, s) for s in sc.tests) and (full or n not in FULL_ONLY)}
        failed = sum(o == "failed" for o in ran.values())
        passed = sum(o == "passed" for o in ran.values())
        tried = counts.get(sc.counter, 0) if sc.counter else passed + failed
        row = {"scenario": sc.name, "tests": f"{passed}/{len(ran)}", "injected": tried, "handled": max(tried - failed, 0) if ran else 0,
               **{b: (failed if b == sc.bad else 0) for b in BAD}, "ran": bool(ran)}
        rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    head = ["scenario", "tests passed", "injected / tried", "handled", *BAD]
    took = meta.get("session") or f"{meta['seconds']:.0f} s"
    lines = [f"# Reliability drill ({meta['mode']})", "", f"{meta['when']}, {took} on {meta['machine']}. "
             "`python benchmarks/drill.py [--full]` writes this file.", "",
             markdown_table([[r["scenario"], r["tests"] if r["ran"] else "not run", r["injected"], r["handled"], *(r[b] for b in BAD)] for r in rows],
                            head, align="l" + "r" * (len(head) - 1))]
    total = {b: sum(r[b] for r in rows) for b in BAD}
    fuzzed = sum(r["injected"] for r in rows if r["scenario"].startswith("fuzzed"))
    lines += ["", f"**Totals**: {fuzzed} fuzzed inputs; " + ", ".join(f"{v} {k}" for k, v in total.items()) + ".",
              "", "A zero column counts the failed tests of scenarios whose failure means that outcome; `handled` = injected "
              "minus failures. Each test injects real faults: processes killed, servers and stores down, racing processes, "
              "canary credentials in the environment, generated inputs (hypothesis)."]
    return "\n".join(lines) + "\n"


def run_tests(full: bool, log_path: Path) -> int:
    files = sorted({s.split("::")[0] for sc in SCENARIOS for s in sc.tests})  # whole files: the table picks its tests
    env = {**os.environ, "ONEVISION_DRILL_LOG": str(log_path)}
    if full:
        env["ONEVISION_FUZZ_EXAMPLES"] = env.get("ONEVISION_FUZZ_EXAMPLES", "1000")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    if full:
        cmd += ["-m", ""]  # the drill-marked tests too
    return subprocess.call(cmd, cwd=REPO, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--full", action="store_true", help="also SIGKILL in every training stage; 1,000 examples per fuzz property")
    ap.add_argument("--from-log", type=Path, help="build the table from this drill log ($ONEVISION_DRILL_LOG of a test session)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results as it is")
    ap.add_argument("--write", action="store_true", help="with --from-log: also write benchmarks/results/drill.md and .json")
    ap.add_argument("--session", help="with --from-log: how long that test session took, for the header (e.g. '18 min 35 s')")
    args = ap.parse_args(argv)
    start = time.time()
    if args.from_log:
        if not args.from_log.exists():
            print(f"error: no drill log at {args.from_log}: run the tests with ONEVISION_DRILL_LOG={args.from_log}", file=sys.stderr)
            return 2
        code, log_path = 0, args.from_log
    else:
        log_path = Path(tempfile.mkdtemp(prefix="onevision-drill-")) / "drill.json"
        code = run_tests(args.full, log_path)
        if not log_path.exists():
            print("error: the drill's tests wrote no log (pytest could not start?)", file=sys.stderr)
            return 2
    log = json.loads(log_path.read_text())
    rows = table(log, args.full)
    meta = {"mode": "full" if args.full else "fast subset" + (" (from a test session's log)" if args.from_log else ""), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": time.time() - start, "machine": f"{os.cpu_count()} cores",
            **({"session": f"the test session ({args.session}: `make test`, the whole suite)"} if args.session else {})}
    text = markdown(rows, meta)
    print(text)
    if not args.no_write and (not args.from_log or args.write):
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "drill.md").write_text(text)
        (RESULTS / "drill.json").write_text(json.dumps({"meta": meta, "rows": rows, "counts": log["counts"]}, indent=2) + "\n")
    bad = sum(r[b] for r in rows for b in BAD)
    return 1 if bad or code else 0


if __name__ == "__main__":
    raise SystemExit(main())
