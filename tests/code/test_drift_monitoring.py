"""Drift monitor units: windows, pooling, photo statistics, data quality, SIDs, alerts, S3 helper."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from onevision.config import StorageConfig
from onevision.data import augment
from onevision.data.images import encode_png
from onevision.monitoring.alert import AlertError, alert_payload, send_alert
from onevision.monitoring.features import Catalog, PixelEmbedder, Projection, image_statistics, window_features
from onevision.monitoring.report import OTHER, pool_rare_categories
from onevision.monitoring.sids import KnnSids, SidTable, prefix_strings
from onevision.monitoring.summary import summary_markdown
from onevision.monitoring.window import latest, parse_window
from onevision.storage.s3 import ENDPOINT_ENV, ObjectStore
from tests.support.markdown_tables import has_row
from tests.support.synthetic_shop import render

# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize("text,expected", [("24h", pd.Timedelta(days=1)), ("90m", pd.Timedelta(minutes=90)), ("7d", pd.Timedelta(days=7)), ("2w", pd.Timedelta(days=14))])
def test_parse_window(text, expected):
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d7", "-1d", "0h", "3y"])
def test_parse_window_rejects_bad_text(text):
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


def test_latest_keeps_only_the_last_span():
    ts = pd.date_range("2026-01-01", periods=10, freq="D", tz="UTC")
    frame = pd.DataFrame({"query_id": range(10), "ts": ts})
    assert latest(frame, "3d")["query_id"].tolist() == [7, 8, 9]
    assert len(latest(frame, None)) == 10


# --------------------------------------------------------------------------- categorical pooling


def test_pooling_keeps_frequent_categories_when_the_window_is_small():
    rng = np.random.default_rng(0)
    ref = pd.Series(rng.choice([f"c{i}" for i in range(100)], size=5000, p=np.r_[[0.5], np.full(99, 0.5 / 99)]))
    cur = pd.Series(rng.choice([f"c{i}" for i in range(100)], size=200))
    ref2, cur2, pooled = pool_rare_categories(ref, cur, threshold=0.1)
    assert pooled > 0
    assert "c0" in set(ref2) and OTHER in set(ref2) and OTHER in set(cur2)
    assert ref2.nunique() <= 5  # k_max = 2 * 0.01 / (1/200 + 1/5000) + 1 ~ 4.8


def test_pooling_leaves_few_categories_alone_and_unseen_ones_visible():
    ref = pd.Series(["a", "b", "c"] * 1000)
    cur = pd.Series(["a", "b", "new"] * 500)
    ref2, cur2, pooled = pool_rare_categories(ref, cur, threshold=0.1)
    assert pooled == 0 and set(cur2) == {"a", "b", "new"}


# --------------------------------------------------------------------------- photos and quality


def test_photo_statistics_move_in_the_expected_direction():
    rng = np.random.default_rng(1)
    photos = np.stack([render(c % 5, rng) for c in range(40)])
    base = image_statistics(photos).mean()
    dark = image_statistics(np.stack([augment.relight(p, 0.6) for p in photos])).mean()
    blurred = image_statistics(np.stack([augment.blur(p, 1.2) for p in photos])).mean()
    assert dark["brightness"] < 0.7 * base["brightness"]
    assert blurred["sharpness"] < 0.7 * base["sharpness"]
    assert abs(blurred["brightness"] - base["brightness"]) < 0.02


@pytest.fixture()
def catalog() -> Catalog:
    items = pd.DataFrame({"item_id": [0, 1], "category": [0, 1], "brand": ["A", "B"], "price": [10.0, 20.0]})
    users = pd.DataFrame({"user_id": [0, 1], "region": ["north", "south"]})
    return Catalog(items, users, image_size=28, channels=1)


def test_quality_issues_name_the_first_problem_of_each_row(catalog):
    good = encode_png(render(0, np.random.default_rng(0)))
    wrong_size = encode_png(np.zeros((14, 14), np.uint8))
    ts = pd.Timestamp("2026-01-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "query_id": range(8),
            "user_id": [0, 1, 0, 0, 99, -1, 0, 1],
            "item_id": [0, 1, 0, 0, 0, 0, 555, 1],
            "ts": [ts] * 7 + [pd.NaT],
            "image": [good, good, b"not a png", None, good, good, good, wrong_size],
            "price": [10.0, -5.0, 10.0, 10.0, 10.0, 10.0, None, 20.0],
        }
    )
    feats = window_features(frame, catalog, PixelEmbedder(14))
    issues = feats.frame["quality_issue"].tolist()
    assert issues == ["ok", "price_out_of_range", "image_undecodable", "image_missing", "user_unknown", "ok", "product_missing", "image_wrong_shape"]
    assert feats.frame.loc[5, "region"] == "anonymous"
    assert feats.frame[["brightness", "contrast", "sharpness"]].iloc[[2, 3, 7]].isna().all().all()
    assert feats.image_ok.tolist() == [True, True, False, False, True, True, True, False]


def test_projection_is_deterministic_and_explains_the_variance():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(500, 12)) * np.linspace(3, 0.1, 12)  # (N, D) decreasing variance
    a, b = Projection.fit(emb, 4), Projection.fit(emb.copy(), 4)
    np.testing.assert_allclose(a.transform(emb), b.transform(emb))
    scales = np.linspace(3, 0.1, 12)
    assert a.axes.shape == (12, 4) and a.explained.sum() == pytest.approx((scales[:4] ** 2).sum() / (scales**2).sum(), abs=0.05)
    assert abs(a.axes[0, 0]) > 0.95  # the widest direction first
    assert np.allclose(a.transform(emb).mean(axis=0), 0, atol=1e-9)


# --------------------------------------------------------------------------- SIDs


def test_sid_table_prefixes_and_unknown_items():
    table = SidTable.from_frame(pd.DataFrame({"item_id": [5, 3, 9], "code_0": [1, 2, 1], "code_1": [7, 8, 9], "code_2": [0, 0, 0]}))
    assert table.prefixes(np.array([3, 5, 42]), levels=1).tolist() == ["2", "1", None]
    assert table.prefixes(np.array([9]), levels=2).tolist() == ["1-9"]
    assert prefix_strings(np.array([[4, 5], [6, 7]]), 2).tolist() == ["4-5", "6-7"]


def test_knn_sids_take_the_nearest_item():
    item_emb = np.eye(3, dtype=np.float32)  # (I, D)
    table = SidTable(np.array([10, 11, 12]), np.array([[0, 1], [1, 1], [2, 1]]))
    knn = KnnSids(np.array([10, 11, 12]), item_emb, table, levels=1)
    queries = np.array([[0.1, 0.9, 0.0], [0.0, 0.2, 0.95]], np.float32)
    assert knn.assign(np.zeros((2, 28, 28), np.uint8), np.array([0, 0]), queries).tolist() == ["1", "2"]


def test_a_retriever_or_a_callable_supplies_the_generated_sids():
    from onevision.monitoring.sids import CallableSids, RetrieverSids
    from onevision.retrieval import RetrievalResult

    class FirstItem:
        name = "stub"

        def retrieve(self, images, user_ids, k):
            ids = np.where(user_ids[:, None] > 0, 12, 10).repeat(k, axis=1)  # (Q, K)
            return RetrievalResult(ids.astype(np.int64), np.zeros(ids.shape, np.float32))

    table = SidTable(np.array([10, 11, 12]), np.array([[0, 1], [1, 1], [2, 1]]))
    images = np.zeros((2, 28, 28), np.uint8)
    sids = RetrieverSids(FirstItem(), table, levels=1)
    assert sids.name == "retriever:stub"
    assert sids.assign(images, np.array([0, 5]), np.zeros((2, 4))).tolist() == ["0", "2"]
    beam = CallableSids(lambda imgs, users: np.array([[3, 4, 5]] * len(imgs)), levels=2, name="beam")
    assert beam.assign(images, np.array([0, 5]), np.zeros((2, 4))).tolist() == ["3-4", "3-4"]


# --------------------------------------------------------------------------- alerts

SUMMARY = {
    "run_id": "r1",
    "status": "drift",
    "drift_detected": True,
    "alarms": ["category"],
    "current": {"label": "test", "rows": 300, "ts_min": None, "ts_max": None},
    "reference": {"split": "train", "rows": 800},
    "checks": {
        "category": {"status": "drift", "score": 0.3, "threshold": 0.1, "meaning": "mix changed", "columns": {}},
        "price": {"status": "ok", "score": 0.01, "threshold": 0.1, "meaning": "prices", "columns": {}},
    },
    "artifacts": {"report_html": "/x/report.html"},
}


class _Hook:
    """A webhook receiver on 127.0.0.1 that records the JSON bodies it gets."""

    def __init__(self, status: int = 200):
        received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"body": json.loads(body), "content_type": self.headers["Content-Type"]})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_send_alert_posts_the_alarms_as_json():
    hook = _Hook()
    try:
        assert send_alert(hook.url, SUMMARY, timeout=5) == 200
    finally:
        hook.close()
    (got,) = hook.received
    assert got["content_type"] == "application/json"
    assert got["body"]["drift_detected"] is True
    assert [a["check"] for a in got["body"]["alarms"]] == ["category"]
    assert "category" in got["body"]["text"] and got["body"]["report"] == "/x/report.html"


def test_send_alert_raises_when_the_hook_refuses_or_is_down():
    hook = _Hook(status=500)
    try:
        with pytest.raises(AlertError, match="500"):
            send_alert(hook.url, SUMMARY, timeout=5)
    finally:
        hook.close()
    with pytest.raises(AlertError):
        send_alert(hook.url, SUMMARY, timeout=2)  # closed: connection refused


def test_alert_payload_and_markdown_name_the_alarm():
    assert alert_payload(SUMMARY)["alarms"][0]["threshold"] == 0.1
    md = summary_markdown(SUMMARY)
    assert "DRIFT" in md and has_row(md, "category", "drift") and "docs/oncall.md" in md


# --------------------------------------------------------------------------- object store


def test_object_store_is_off_without_a_bucket(monkeypatch):
    assert ObjectStore.from_config(StorageConfig()) is None
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:9")
    store = ObjectStore.from_config(StorageConfig(bucket="bkt", prefix="/a/b/"))
    assert store.endpoint_url == "http://127.0.0.1:9"
    assert store.key("drift/x.html") == "a/b/drift/x.html" and store.uri("y") == "s3://bkt/a/b/y"


def test_object_store_round_trip(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "report.html").write_text("<html>drift</html>")
    (src / "sub" / "summary.json").write_text('{"ok": true}')
    with moto.mock_aws():
        store = ObjectStore("reports-bucket", "onevision")
        store.client().create_bucket(Bucket="reports-bucket")
        uris = store.upload_dir(src, "drift/run-1")
        assert uris == ["s3://reports-bucket/onevision/drift/run-1/report.html", "s3://reports-bucket/onevision/drift/run-1/sub/summary.json"]
        assert store.list_keys("drift") == ["drift/run-1/report.html", "drift/run-1/sub/summary.json"]
        got = store.download_dir("drift/run-1", tmp_path / "dst")
        assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in got) == ["report.html", "sub/summary.json"]
        assert (tmp_path / "dst" / "report.html").read_text() == "<html>drift</html>"
        with pytest.raises(FileNotFoundError):
            store.upload_file(src / "missing.txt", "x")
