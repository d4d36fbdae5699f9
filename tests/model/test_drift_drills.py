"""The drift monitor on a tiny real demo shop: fresh traffic raises no alarm, every drill raises its alarm.

One tiny project (the real demo builder, a narrow encoder trained for a few
epochs, small VRQ codebooks) so the monitor runs its full path: the aligned
encoder's embedding and the kNN stand-in for generated SIDs. Windows come
from the demo machinery with new seeds (onevision.monitoring.drills).
"""

from __future__ import annotations

import pytest

from tests.model.conftest import DEMO_SHOP, NARROW_ENCODER, needs_fashion_mnist

TINY = [*DEMO_SHOP, "data.n_queries=1500", *NARROW_ENCODER, "encoder.epochs=2",
        "vrq.codebook_sizes=[16, 8, 8]", "vrq.epochs=0", "vrq.batch_size=512", "drift.reference_rows=1200"]
ROWS = 600

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


@pytest.fixture(scope="module")
def project(demo_project):
    from onevision.monitoring.check import build_baseline

    root, cfg, _ = demo_project("drift_project", TINY, ["align_encoder", "vrq"])
    return root, cfg, build_baseline(cfg, root)


def run(project, kind, seed, tmp_path):
    from onevision.monitoring.check import run_drift_check
    from onevision.monitoring.drills import drill_window

    root, cfg, baseline = project
    window = drill_window(cfg, root, kind, ROWS, seed)
    return run_drift_check(cfg, root, current=window, current_label=str(kind), baseline=baseline, out_dir=tmp_path / "run")


def test_monitor_uses_the_encoder_and_the_knn_sid_stand_in(project):
    _, _, baseline = project
    assert baseline.embedder.name.startswith("encoder:")
    assert baseline.sid_source.startswith("knn-top1") and baseline.has_sids


@pytest.mark.parametrize("seed", [101, 102])
def test_fresh_traffic_from_the_same_shop_raises_no_alarm(project, seed, tmp_path):
    summary = run(project, None, seed, tmp_path)
    assert summary["current"]["rows"] == ROWS
    assert summary["status"] == "ok", {n: (c["status"], c["score"], c["threshold"]) for n, c in summary["checks"].items()}
    assert summary["checks"]["generated_sid"]["status"] == "ok"


@pytest.mark.parametrize(
    "kind,expected",
    [("category-mix", {"category"}), ("lighting", {"image_stats", "image_embedding"}), ("blur", {"image_stats"}), ("new-brand", {"brand", "price"})],
)
def test_each_drill_raises_its_alarm(project, kind, expected, tmp_path):
    summary = run(project, kind, 7, tmp_path)
    assert summary["drift_detected"], {n: (c["status"], c["score"]) for n, c in summary["checks"].items()}
    assert expected <= set(summary["alarms"]), summary["alarms"]
