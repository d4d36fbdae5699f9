"""Every benchmark runs end to end, small, as a user runs it (``python benchmarks/X.py ...``), so a broken one fails CI.

Each writes into a scratch folder (never ``benchmarks/results``), and each test checks the table it wrote, not only
the exit code. The synthetic ones need nothing trained; the ones that read a trained project share the session's
TINY retrain (``tiny_full_run``, which the pipeline and crash tests build anyway).

Left out, on purpose: ``robustness.py`` (one whole retrain flow per variant: its building blocks are
``offline_eval.py``'s, run here) and ``drill.py`` (its fast subset is the test suite itself: ``.ci/run`` builds
its table from this session's log, ``tests/code/test_drill_table.py`` checks the table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO
from tests.support.markdown_tables import has_row
from tests.support.projects import TINY_FLOW as TINY

pytestmark = [pytest.mark.integration, pytest.mark.slow]



def bench(script: str, *args: str | Path, timeout: float = 300) -> str:
    """Run ``benchmarks/<script>`` with this interpreter from the repository root; fail with its output's tail."""
    cmd = [sys.executable, str(REPO / "benchmarks" / script), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{script} {' '.join(map(str, args))} exited {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}"
    return result.stdout


SYNTHETIC = {
    "beam_search": (["--quick"], "beam_search_quick.md", ("synthetic 2,000",)),
    "mca_scaling": (["--quick"], "mca_scaling_quick.md", ("2,000", "Flat")),
    "pruning": (["--quick"], "pruning_quick.md", "mode **synthetic**"),
    "geo_scaling": (["--quick"], "geo_scaling_quick.md", "20,000"),
}


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_benchmark_quick_mode(name: str, tmp_path: Path):
    args, written, expect = SYNTHETIC[name]
    out = tmp_path if name == "geo_scaling" else tmp_path / Path(written).stem
    bench(f"{name}.py", *args, "--out", out)
    table = (tmp_path / written).read_text()
    assert has_row(table, *expect) if isinstance(expect, tuple) else expect in table, table[:2000]
    assert json.loads((tmp_path / written).with_suffix(".json").read_text())


def test_serving_latency_quick(tmp_path: Path):
    """No project given: it builds the tiny kNN project, then times in-process, pyfunc and the real REST server."""
    bench("serving_latency.py", "--requests", "5", "--warmup", "2", "--out", tmp_path / "serving.md", timeout=420)
    table = (tmp_path / "serving.md").read_text()
    for path in ("| Retriever.retrieve", "| pyfunc predict", "| REST POST /invocations"):
        assert path in table, table


def test_ddp_throughput_quick(tmp_path: Path):
    bench("ddp_throughput.py", "--quick", "--out", tmp_path, timeout=600)
    result = json.loads((tmp_path / "ddp_throughput_quick.json").read_text())
    assert result["processes"] == 2
    assert "pretrain" in (tmp_path / "ddp_throughput_quick.md").read_text()


def test_benchmarks_on_a_trained_project(tiny_full_run, tmp_path: Path):
    """The benchmarks that read a trained project, on the session's TINY retrain."""
    project, _ = tiny_full_run
    bench("offline_eval.py", "--root", project, "--out", tmp_path)
    offline = (tmp_path / "offline_eval_small.md").read_text()
    assert "MCA" in offline and "OneVision" in offline, offline[:2000]

    bench("pruning.py", project, "--quick", "--out", tmp_path / "pruning")
    pruning = json.loads((tmp_path / "pruning.json").read_text())
    assert pruning["mode"] == "trained" and pruning["speedup"]["batch1_p50_ms"] > 0

    bench("beam_search.py", "--quick", "--root", project, "--items", "0", "--out", tmp_path / "beam")
    assert has_row((tmp_path / "beam.md").read_text(), "trained (dpo)")

    bench("drift_monitoring.py", "--root", project, "--rows", "100", "--clean-windows", "2", "--shift-seeds", "1",
          "--timing-rows", "500", "--out", tmp_path / "drift")
    drift = json.loads((tmp_path / "drift.json").read_text())
    assert drift["false_alarms"]["windows"] == 2 and 0.0 <= drift["false_alarms"]["rate"] <= 1.0
    assert drift["detection"] and all(d["windows"] == 1 for d in drift["detection"].values())

    bench("generator.py", "--root", project, "--quick", "--out", tmp_path / "generator")
    generator = (tmp_path / "generator" / "generator_small_quick.md").read_text()
    assert has_row(generator, "onevision_learned_only") and has_row(generator, "onevision_no_decoder"), generator[:2000]
    assert set(json.loads((tmp_path / "generator" / "generator_small_quick.json").read_text())) >= {"ablations", "weights", "personalisation"}

    bench("mca_ranker.py", "--root", project, "--out", tmp_path / "mca")  # retrains stage mca in a copy: the project is untouched
    ranker = json.loads((tmp_path / "mca" / "mca_ranker_small.json").read_text())
    assert {"mca", "mca_pointwise", "mca_no_ranker"} <= set(ranker["systems"])
    assert "mca - mca_pointwise: NDCG@10" in ranker["paired"] and ranker["ltr"]["trials"], ranker["paired"]


def test_vrq_ablation_quick(tmp_path: Path):
    """Builds its own TINY dataset, trains the aligned and the category encoder, then VRQ vs RQ-KMeans."""
    tiny = [o for o in TINY if o.split(".")[0] in {"data", "encoder", "vrq"}]
    bench("vrq_ablation.py", "--root", tmp_path / "project", *[x for o in tiny for x in ("--set", o)], "--out", tmp_path, timeout=600)
    assert "RQ-KMeans" in (tmp_path / "vrq_ablation.md").read_text()
