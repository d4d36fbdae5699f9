"""Stages pretrain -> sft -> dpo on a tiny demo project: files in, checkpoints and metrics out, servable.

The upstream artifacts are stand-ins (a "stand-in" project, tests/support/projects.py) so this test checks *this* package's wiring only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from onevision import paths
from onevision.config import load_config
from onevision.retrieval import Retriever
from tests.support.defaults import default_params_file
from tests.support.projects import TINY_STAND_IN, build_project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("generative")
    return root, build_project(root, "stand-in", profile="small", overrides=TINY_STAND_IN).cfg


@pytest.mark.slow
def test_stages_write_checkpoints_metrics_and_serve(project):
    from onevision.comparison.systems import build_systems
    from onevision.generative.retriever import OneVisionRetriever
    from onevision.stages import run_stage, stage_names

    root, cfg = project
    order = list(stage_names())
    assert order.index("mca") < order.index("pretrain") < order.index("sft") < order.index("dpo") < order.index("evaluate")
    for stage in ("pretrain", "sft", "dpo"):
        metrics = run_stage(stage, cfg, root)
        assert (root / "models" / "generative" / stage / "weights.pt").exists()
        assert (root / paths.PLOTS / f"{stage}.png").exists() and (root / paths.REPORTS / f"{stage}.md").exists()
        saved = json.loads((root / paths.metrics_file(stage)).read_text())
        assert saved["probe"]["invalid_sid_rate"] == 0.0 and 0.0 <= saved["probe"]["hr_at_10"] <= 1.0
        assert len(saved["history"]) == {"pretrain": 2, "sft": 1, "dpo": 1}[stage]
        assert metrics["probe"] == saved["probe"]
    dpo = json.loads((root / paths.metrics_file("dpo")).read_text())
    assert 0.0 <= dpo["preference_accuracy"] <= 1.0 and dpo["catalog_kl_to_reference"] >= 0.0 and dpo["n_pairs"] > 0
    assert "token_kl_to_reference" in dpo["val"]

    # the pretrain checkpoint serves everyone anonymously; sft/dpo know the users
    pre = OneVisionRetriever.load(root, "pretrain", cfg=cfg)
    assert pre.name == "onevision_pretrain" and len(pre.checkpoint.user_ids) == 0
    final = OneVisionRetriever.load(root, "dpo", cfg=cfg)
    assert final.name == "onevision" and isinstance(final, Retriever)
    queries = pd.read_parquet(root / paths.VALIDATED / "queries.parquet").head(5)
    from onevision.encoder.api import decode_image_column

    images = decode_image_column(queries)
    res = final.retrieve(images, np.array([*queries["user_id"].to_numpy()[:3], 10_000, -1]), k=12)
    assert res.item_ids.shape == (5, 12) and (res.item_ids >= 0).all()
    assert all(len(set(r)) == 12 for r in res.item_ids.tolist())
    assert final.evaluation_metrics() == {"invalid_sid_rate": 0.0, "generated_sids": 5 * 12}

    names = [s.name for s in build_systems(cfg, root, names=["onevision", "onevision_pretrain", "onevision_sft"])]
    assert names == ["onevision", "onevision_sft", "onevision_pretrain"]


def test_best_epoch_keeps_the_weights_of_the_epoch_with_most_val_orders(monkeypatch):
    """keep_best_epoch: epoch 0 (the input checkpoint) wins unless an epoch beats it on VAL orders."""
    from onevision.generative import probe as probe_module
    from onevision.generative.model import GeneratorConfig, SIDGenerator

    def run(scores: list[float], enabled: bool = True):
        model = SIDGenerator(GeneratorConfig(codebook_sizes=(4, 3), d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, embed_dim=0))
        scripted = iter(scores)
        monkeypatch.setattr(probe_module, "probe", lambda *a, **k: {"sim_orders_per_query": next(scripted), "hr_at_10": 0.5})
        keeper = probe_module.BestEpoch(model, None, None, enabled)  # probes the start (epoch 0)
        weights = {0: {k: v.clone() for k, v in model.state_dict().items()}}
        for epoch in range(1, len(scores)):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1 * epoch)  # "training" changes every weight
            weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
            record: dict = {}
            keeper(epoch, record)
            assert record["val_sim_orders_per_query"] == scores[epoch]
        report = keeper.restore()
        return model, weights, report

    model, weights, report = run([0.5, 0.4, 0.45])  # fine-tuning only hurts: ship the input
    assert report["kept_epoch"] == 0 and report["val_sim_orders_per_query_kept"] == 0.5
    assert all(torch.equal(v, weights[0][k]) for k, v in model.state_dict().items())

    model, weights, report = run([0.5, 0.4, 0.6, 0.55])  # epoch 2 is best, not the last one
    assert report["kept_epoch"] == 2 and report["val_sim_orders_per_query_start"] == 0.5
    assert all(torch.equal(v, weights[2][k]) for k, v in model.state_dict().items())

    model, weights, report = run([0.5, 0.4], enabled=False)  # switched off: the last epoch ships
    assert report["kept_epoch"] == -1
    assert all(torch.equal(v, weights[1][k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_calibrate_pruning_writes_its_files_and_feeds_evaluate_and_serving(project):
    """Stage calibrate_pruning on the tiny project: chosen config, Pareto metrics, plot and report; the
    evaluation adds the onevision_pruned row and the serving bundle decodes with the chosen config."""
    from onevision.comparison.systems import build_systems
    from onevision.generative.pruning import PruningConfig, load_pruning
    from onevision.serving.bundle import build_bundle, load_retriever, read_manifest
    from onevision.stages import declaration, run_stage, stage_names

    root, _ = project
    order = list(stage_names())
    assert order.index("dpo") < order.index("calibrate_pruning") < order.index("evaluate")
    assert "pruning" in declaration("calibrate_pruning").sections
    cfg = load_config(default_params_file(), profile="small", overrides=[
        *TINY_STAND_IN, "pruning.visual_keep_mass=[1.0,0.5]", "pruning.beam_margin=[null,1.0]", "pruning.level_beam_widths=[null]",
        "pruning.early_exit=[false,true]", "pruning.val_queries=30", "pruning.test_queries=20", "pruning.latency_queries=4",
        "pruning.warmup=1", "pruning.batch_size=16", "pruning.k=20", "pruning.max_relative_loss=0.05",
    ])
    for stage in ("pretrain", "sft", "dpo"):
        if not (root / "models" / "generative" / stage / "weights.pt").exists():
            run_stage(stage, cfg, root)
    summary = run_stage("calibrate_pruning", cfg, root)
    for rel in ("models/pruning/pruning.json", "metrics/pruning.json", "metrics/calibrate_pruning.json", "plots/pruning_pareto.png", "reports/pruning.md"):
        assert (root / rel).exists(), rel
    result = json.loads((root / "metrics" / "pruning.json").read_text())
    assert len(result["points"]) == 8 and result["points"][0]["label"] == "none" and result["unpruned"]["label"] == "none"
    assert result["chosen"]["label"] in result["pareto"] and summary["chosen"] == result["chosen"]["label"]
    assert all(p["invalid_sid_rate"] == 0.0 for p in result["points"])
    assert all(loss <= 0.05 + 1e-9 for loss in result["chosen"]["loss"].values())
    assert set(result["test"]["speedup"]) == {"batch1_p50_ms", "batch1_p95_ms", "batched_ms_per_query"}
    chosen = load_pruning(root)
    assert chosen == PruningConfig.from_dict(result["chosen"]["config"])

    systems = {s.name: s for s in build_systems(cfg, root, names=["onevision", "onevision_pruned"])}
    assert list(systems)[:2] == ["onevision", "onevision_pruned"]  # side by side in metrics/evaluate.json
    assert systems["onevision"].pruning is None and systems["onevision_pruned"].pruning == chosen
    assert systems["onevision_pruned"].model is systems["onevision"].model  # one checkpoint, two decoders

    bundle = build_bundle(cfg, root, root / "bundle")
    assert read_manifest(bundle)["pruning"] == chosen.to_dict()
    assert load_retriever(bundle).pruning == chosen
