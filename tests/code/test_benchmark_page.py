"""The page of `python -m benchmarks run` (benchmarks/page.py): every section, ratios, plots, honest verdicts."""

from __future__ import annotations

import json

from benchmarks.__main__ import main as bench_main
from benchmarks.page import write_page


def _info(flow_s: float = 150.0, rerun_s: float = 12.0, overhead: float = 4.0, p50_1m: float = 2.6,
          choices: tuple[str, ...] = ("w16,64", "w16,64", "m3+w16,64")) -> dict:
    choices = list(choices)
    system = lambda name, hr, p50: {"system": name, "hr@10": hr, "ndcg@10": 0.7, "orders_per_1k": 240.0, "p50_ms": p50, "p95_ms": p50 * 1.3,  # noqa: E731
                                    "p99_ms": p50 * 1.6, "qps_batched": 900.0, "hr@10/mca": round(hr / 0.87, 3), "orders_per_1k/mca": 1.0,
                                    "p50_ms/mca": round(p50 / 1.3, 3), "ndcg@10/mca": 1.0}
    return {
        "mode": "quick",
        "machine": {"cpu": "Test CPU", "cores": 2, "memory_gib": 24.0, "python": "3.12", "commit": "abc1234", "load_average_at_start": 0.1, "date": "2026-12-07 12:00 UTC"},
        "flows": [{"profile": "small", "stages": [{"stage": "prepare", "seconds": 20.0, "peak_rss_mb": 400.0}, {"stage": "pretrain", "seconds": 130.0, "peak_rss_mb": 1200.0}],
                   "flow_seconds": flow_s, "stage_seconds": 150.0, "no_change_rerun_seconds": rerun_s}],
        "systems": {"small": [system("onevision", 0.878, 2.0), system("mca", 0.87, 1.3), system("knn", 0.86, 0.4)]},
        "serving_memory": {"small": {"queries": 200, "peak_rss_mb": 900.0, "after_imports_mb": 500.0, "after_load_mb": 850.0, "python_start_mb": 30.0,
                                     "model_parameters_mb": 4.3, "item_store_mb": 6.0, "trie_mb": 0.4}},
        "beam_search": {"rows": [{"catalog": "trained (dpo)", "batch": 1, "width": 20, "constrained_ms": 0.67, "unconstrained_ms": 0.64, "overhead_pct": overhead,
                                  "unconstrained_invalid_rate": 0.9}]},
        "geo_scaling": {"rows": [{"items": 10_000, "onevision_b1_p50_ms": 2.0, "onevision_p50_vs_smallest": 1.0, "exact_recall_b1_p50_ms": 1.0,
                                  "exact_recall_over_onevision_b1": 0.5, "trie_mb": 1.0, "item_store_mb": 10.0},
                                 {"items": 1_000_000, "onevision_b1_p50_ms": p50_1m, "onevision_p50_vs_smallest": p50_1m / 2.0, "exact_recall_b1_p50_ms": 95.0,
                                  "exact_recall_over_onevision_b1": 95.0 / p50_1m, "trie_mb": 90.0, "item_store_mb": 1000.0}]},
        "mca_scaling": {"rows": [{"n_items": 1_000_000, "index": "HNSW32", "nprobe": None, "ann_recall": 0.97, "build_s": 300.0, "index_mb": 700.0, "b1_p50_ms": 3.0, "qps": 400.0},
                                 {"n_items": 1_000_000, "index": "IVF1000,Flat", "nprobe": 16, "ann_recall": 0.37, "build_s": 60.0, "index_mb": 520.0, "b1_p50_ms": 9.5, "qps": 300.0},
                                 {"n_items": 10_000, "index": "Flat", "nprobe": None, "ann_recall": 1.0, "build_s": 0.1, "index_mb": 5.0, "b1_p50_ms": 1.2, "qps": 900.0}]},
        "pruning": {"small": {"points": 10, "chosen": "w16,64", "val_speedup": {"batch1_p50_ms": 1.6}, "val_loss": {"hr@10": 0.004, "sim_orders_per_1k": 0.002},
                              "val_loss_hi": {"hr@10": 0.009, "sim_orders_per_1k": 0.008}, "test_speedup": {"batch1_p50_ms": 1.55},
                              "test_loss": {"hr@10": 0.0, "sim_orders_per_1k": 0.007}, "choices": choices, "agreement": max(choices.count(c) for c in choices)}},
        "gpu": {"skipped": True, "note": "no CUDA device on this machine (CI never has one): GPU section skipped"},
        "run_seconds": 95.0,
    }


def test_the_page_has_every_section_its_ratios_and_plots(tmp_path):
    out = tmp_path / "results.md"
    write_page(_info(), out)
    text = out.read_text()
    for heading in ("## 1. The retrain flow", "## 2. The systems", "## 3. Dynamic pruning", "## 4. Catalog scaling", "## 5. Constrained",
                    "## 6. Serving memory", "## 7. GPU", "## Targets"):
        assert heading in text
    pruned = next(ln for ln in text.splitlines() if "`w16,64`, `w16,64`, `m3+w16,64`" in ln)
    assert [c.strip() for c in pruned.strip("|").split("|")][:6] == ["small", "10", "`w16,64`", "1.60x", "hr@10 +0.40 %, sim_orders_per_1k +0.20 %",
                                                                     "hr@10 +0.90 %, sim_orders_per_1k +0.80 %"] and "2 of 3" in pruned
    assert "Commit abc1234" in text and "Test CPU, 2 cores" in text and "run time 1.6 min" in text
    assert "| onevision " in text and "1.009" in text  # HR@10 / MCA of the shipped row
    # OneVision at 1M against MCA's fastest index with ANN recall >= 0.95 (HNSW here, not the 0.37-recall IVF)
    assert "2.600 vs 3.000 ms" in text
    for png in ("results/results_quality_latency_small.png", "results/results_scaling.png"):
        assert (tmp_path / png).stat().st_size > 5_000 and f"]({png})" in text
    # a page written inside results/ (the quick run's) keeps its plots beside it, and its links resolve
    quick = tmp_path / "results" / "run_quick.md"
    write_page(_info(), quick)
    for png in ("run_quick_quality_latency_small.png", "run_quick_scaling.png"):
        assert (tmp_path / "results" / png).is_file() and f"]({png})" in quick.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["machine"]["commit"] == "abc1234"


def test_targets_are_recorded_as_met_or_missed_from_the_numbers(tmp_path):
    out = tmp_path / "ok.md"
    write_page(_info(), out)
    ok = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and ("met" in ln or "missed" in ln)]
    assert ok and all("**missed**" not in ln for ln in ok)
    bad = tmp_path / "bad.md"
    write_page(_info(flow_s=400.0, rerun_s=45.0, overhead=30.0, p50_1m=5.0, choices=("w16,64", "w32,100", "m3")), bad)
    missed = [ln for ln in bad.read_text().splitlines() if "**missed**" in ln]
    assert len(missed) == 6  # flow, rerun, pruning choice, constrained overhead, 1M vs 10k, 1M vs MCA


def test_the_command_explains_itself(capsys):
    assert bench_main(["--help"]) == 0
    assert "python -m benchmarks run" in capsys.readouterr().out
    assert bench_main(["walk"]) == 2
    assert "unknown command 'walk'" in capsys.readouterr().err


def test_a_stage_records_its_own_peak_memory_not_its_parents():
    """Linux keeps ru_maxrss across fork and exec, so a small stage started by a big parent would report the parent's
    peak; peak_rss_mb reads the process's own high-water mark."""
    import subprocess
    import sys

    ballast = bytearray(600 << 20)  # the parent's peak: over 600 MB
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page
    out = subprocess.run([sys.executable, "-c", "from onevision.stages import peak_rss_mb; print(peak_rss_mb())"], capture_output=True, text=True, check=True)
    assert 5 < float(out.stdout) < 400
    del ballast
