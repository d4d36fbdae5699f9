"""The drift check end to end on a synthetic project: both directions, the report files (the CLI's exit codes,
which need the flow, are in tests/integration/test_drift_flow.py).

The synthetic project (tests/support/synthetic_shop.py) has no encoder, so the
monitor runs on its documented pixel fallback. Evidently's import (~4 s) and
one report per test (~1-3 s) make this module slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from onevision.config import load_config
from onevision.monitoring.check import build_baseline, run_drift_check
from onevision.monitoring.drills import simulate_shift
from tests.support.projects import build_project
from tests.support.synthetic_shop import synthetic_window

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return build_project(tmp_path_factory.mktemp("drift") / "proj", "synthetic").root


@pytest.fixture(scope="module")
def cfg(project):
    return load_config(project / "params.yaml")


@pytest.fixture(scope="module")
def baseline(cfg, project):
    return build_baseline(cfg, project)


@pytest.fixture(scope="module")
def items(project) -> pd.DataFrame:
    return pd.read_parquet(project / "data/validated/items.parquet")


def check(cfg, project, baseline, window, tmp_path):
    return run_drift_check(cfg, project, current=window, current_label="test", baseline=baseline, out_dir=tmp_path / "run")


def test_clean_window_raises_no_alarm_and_writes_the_report(cfg, project, baseline, tmp_path):
    summary = check(cfg, project, baseline, synthetic_window(project, 400, seed=11), tmp_path)
    assert summary["status"] == "ok" and not summary["drift_detected"] and summary["alarms"] == []
    assert summary["embedding_source"].startswith("fallback:pixels")
    assert summary["checks"]["generated_sid"]["status"].startswith("skipped: no model")
    for name in ("image_embedding", "image_stats", "category", "brand", "price", "region", "data_quality"):
        c = summary["checks"][name]
        assert c["status"] == "ok" and c["score"] < c["threshold"], name
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["run_id"] == summary["run_id"]
    html = (run / "report.html").read_text()
    assert len(html) > 100_000 and "Drift in column 'brightness'" in html and "Drift in column 'pc00'" in html
    assert json.loads((run / "evidently.json").read_text())["metrics"]
    assert "no drift" in (run / "summary.md").read_text()


@pytest.mark.parametrize(
    "kind,expected",
    [("lighting", {"image_stats", "image_embedding"}), ("blur", {"image_stats"}), ("new-brand", {"brand", "price"}), ("category-mix", {"category"})],
)
def test_each_shift_raises_its_alarm(cfg, project, baseline, items, tmp_path, kind, expected):
    base = synthetic_window(project, 1200 if kind == "category-mix" else 400, seed=21)
    summary = check(cfg, project, baseline, simulate_shift(kind, base, items, seed=3), tmp_path)
    assert summary["drift_detected"] and summary["status"] == "drift"
    assert expected <= set(summary["alarms"]), summary["alarms"]
    if kind == "new-brand":
        assert summary["checks"]["image_embedding"]["status"] == "ok"  # same photos: only the product columns move


def test_broken_queries_raise_the_data_quality_alarm(cfg, project, baseline, tmp_path):
    window = synthetic_window(project, 300, seed=31)
    window.loc[:29, "image"] = b"\x89PNG broken"
    window.loc[30:44, "user_id"] = 10_000  # unknown users
    summary = check(cfg, project, baseline, window, tmp_path)
    dq = summary["checks"]["data_quality"]
    assert dq["status"] == "drift" and dq["score"] == pytest.approx(45 / 300)
    assert dq["details"]["issues"] == {"image_undecodable": 30, "user_unknown": 15}
    assert "data_quality" in summary["alarms"]


def test_precomputed_sid_prefixes_drive_the_sid_check(cfg, project, tmp_path):
    reference = pd.read_parquet(project / "data/validated/queries.parquet").iloc[:800]
    reference = reference.assign(sid_prefix=[str(i % 8) for i in range(len(reference))])
    baseline = build_baseline(cfg, project, reference=reference)
    same = synthetic_window(project, 400, seed=41).assign(sid_prefix=[str(i % 8) for i in range(400)])
    moved = same.assign(sid_prefix=[str(i % 3) for i in range(400)])  # traffic collapses onto 3 catalog regions
    ok = check(cfg, project, baseline, same, tmp_path)
    assert ok["sid_source"] == "precomputed sid_prefix columns" and ok["checks"]["generated_sid"]["status"] == "ok"
    drifted = check(cfg, project, baseline, moved, tmp_path)
    assert drifted["checks"]["generated_sid"]["status"] == "drift"


def test_too_few_queries_give_no_verdict(cfg, project, baseline, tmp_path):
    summary = check(cfg, project, baseline, synthetic_window(project, 20, seed=51), tmp_path)
    assert summary["status"] == "insufficient_data" and not summary["drift_detected"]
    assert not (tmp_path / "run" / "report.html").exists() and (tmp_path / "run" / "summary.json").exists()


def test_mlflow_run_holds_scores_and_report(cfg, project, baseline, tmp_path):
    from mlflow.tracking import MlflowClient

    from onevision.monitoring.publish import log_to_mlflow
    from onevision.project import Project

    cfg = cfg.model_copy(deep=True)
    cfg.tracking.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = check(cfg, project, baseline, synthetic_window(project, 300, seed=71), tmp_path)
    run_id = log_to_mlflow(Project(project, cfg, cfg.tracking.tracking_uri), summary)
    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "onevision-drift"
    assert run.data.tags["status"] == "ok" and run.data.metrics["drift_detected"] == 0.0
    assert "image_embedding.score" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run_id, "drift")} >= {"drift/report.html", "drift/summary.json"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["artifacts"]["mlflow_run_id"] == run_id


def test_drift_page_opens_on_the_verdict_in_a_real_browser(cfg, project, baseline, items, tmp_path):
    from tests.support.browser import open_page

    base = synthetic_window(project, 400, seed=21)
    summary = check(cfg, project, baseline, simulate_shift("lighting", base, items, seed=3), tmp_path)
    seen = open_page(tmp_path / "run" / "report.html")
    # what a reader meets, in order: the verdict, then Evidently's blocks with the photo statistics
    # before the 16 embedding components
    text = seen.text
    assert text.index("DRIFT: ") < text.index("Drift in column 'brightness'") < text.index("Drift in column 'pc00'")
    first_screen = seen.text[:1500]
    assert first_screen.lstrip().startswith("DRIFT: ") and "image_stats" in first_screen and "What to do" in seen.text
    # checks sorted by score / threshold: the alarms lead the table
    import re

    block = (tmp_path / "run" / "report.html").read_text().split('id="onevision-verdict"', 1)[1].split("</table>", 1)[0]
    names = re.findall(r'<tr class="[^"]*"><td>([a-z_]+)</td>', block)
    assert set(names) == set(summary["checks"]) and names[0] in summary["alarms"]
    checks = [summary["checks"][n] for n in names if summary["checks"][n]["score"] is not None]
    ratios = [c["score"] / c["threshold"] for c in checks]
    assert ratios == sorted(ratios, reverse=True)
    (tmp_path / "drift.png").write_bytes(seen.screenshot)


def test_each_run_lands_in_the_local_evidently_workspace(cfg, project, baseline, tmp_path):
    from evidently.ui.workspace import Workspace

    for seed in (71, 72):
        summary = check(cfg, project, baseline, synthetic_window(project, 300, seed=seed), tmp_path / str(seed))
    workspace = Workspace.create(summary["evidently_workspace"])
    (found,) = workspace.search_project(f"onevision-drift-{cfg.profile}")
    assert len(workspace.list_runs(found.id)) >= 2  # `evidently ui --workspace .onevision/evidently` shows the history
