"""Evaluation and embedding extraction sharded over a 2-worker local Dask cluster equal the serial passes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from onevision import paths
from onevision.comparison.shards import shard_bounds
from onevision.comparison.systems import build_systems
from onevision.config import PARAMS_FILE, load_config
from onevision.encoder.api import ENCODER_DIR, ImageEncoder, decode_image_column, fuse_views, load_item_embeddings
from onevision.evaluation.cost import limit_threads
from onevision.evaluation.harness import evaluate_system, load_test_set
from onevision.evaluation.metrics import json_safe

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.parametrize(("n", "shards", "align"), [(0, 2, 64), (1, 2, 64), (64, 2, 64), (65, 2, 64), (1000, 3, 64), (10, 7, 1)])
def test_shard_bounds_cover_the_rows_in_whole_batches(n, shards, align):
    bounds = shard_bounds(n, shards, align)
    assert len(bounds) <= shards
    assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n))
    assert all(lo % align == 0 and hi > lo for lo, hi in bounds)


def test_dask_sharded_evaluation_equals_serial(tiny_full_run, tmp_path):
    from tests.support.flows import load

    # loaded twice in one process, as the deployment checks and the command line do in one test session: the second
    # load gets Prefect's "__prefect_loader_<hash>__" module, which the Dask workers cannot import (they died, it hung)
    load("sharded.py:evaluate_sharded")
    evaluate_sharded = load("sharded.py:evaluate_sharded")
    project, _ = tiny_full_run
    cfg = load_config(project / PARAMS_FILE)
    test = load_test_set(cfg, project)
    systems = build_systems(cfg, project)
    names = [s.name for s in systems]
    assert {"onevision", "mca"} <= set(names)

    out = evaluate_sharded(str(project), workers=2, systems=names, report=str(tmp_path / "sharded.json"),
              embeddings_out=str(tmp_path / "items.npz"))

    assert json.loads((tmp_path / "sharded.json").read_text()) == out
    assert not (project / "reports" / "evaluate_sharded.json").exists()  # --report honoured: nothing in the project
    shown = cfg.evaluate.shown or cfg.data.impressions_per_query
    with limit_threads(1):  # the workers' thread count
        for system in systems:
            serial = evaluate_system(system, test, ecfg=cfg.evaluate, shown=shown, seed=cfg.seed, measure_cost=False)
            sharded = out["systems"][system.name]
            assert sharded["ranked_sha256"] == hashlib.sha256(serial.ranked.astype(np.int64).tobytes()).hexdigest(), system.name
            expected = json_safe(serial.metrics)
            quality = {k: v for k, v in sharded.items() if k != "ranked_sha256"}
            assert {"hr@10", "mrr", "hr@10_ci_lo", "order_hr@10"} <= set(quality)
            assert quality == {k: expected[k] for k in quality}, system.name  # every quality metric, exactly

    # the catalog embedded in shards equals one serial pass, fused the stage's way, and the saved embeddings
    import pandas as pd

    views = pd.read_parquet(project / paths.VALIDATED / "views.parquet").sort_values(["item_id", "view_id"], kind="stable")
    saved_ids, saved = load_item_embeddings(project)
    views = views[views["item_id"].isin(saved_ids)]
    with limit_threads(1):
        view_emb = ImageEncoder.load(project / ENCODER_DIR).embed(decode_image_column(views, cfg.data.import_dir, cfg.data.image_channels))
    row_of = {int(item): row for row, item in enumerate(saved_ids)}
    serial_items = fuse_views(view_emb, np.array([row_of[int(i)] for i in views["item_id"]]), len(saved_ids), cfg.encoder.fusion)
    with np.load(tmp_path / "items.npz") as sharded_file:
        np.testing.assert_array_equal(sharded_file["item_ids"], saved_ids)
        np.testing.assert_array_equal(sharded_file["embeddings"], serial_items)
    assert out["embeddings"]["shards"] == 2 or len(views) <= 512
    assert out["embeddings"]["embeddings_max_abs_diff"] < 1e-5
