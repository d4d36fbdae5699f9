"""The pyfunc model over a generative (OneVision) bundle: saved, loaded by MLflow, answering queries."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from onevision.config import load_config
from onevision.data.images import encode_png
from onevision.serving.bundle import build_bundle, read_manifest
from onevision.serving.pyfunc import save_bundle_model

from .promotion_project import add_generative_checkpoint, item_images, make_tiny_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_generative_bundle_serves_through_pyfunc(tmp_path):
    root = make_tiny_project(tmp_path / "project", serving={"retriever": "onevision", "stage": "dpo"})
    add_generative_checkpoint(root)
    bundle = build_bundle(load_config(root / "params.yaml"), root, tmp_path / "bundle")
    manifest = read_manifest(bundle)
    assert manifest["retriever"] == "onevision" and "models/generative/dpo" in manifest["files"]
    assert "data/embeddings/items.npz" not in manifest["files"]  # only what the generative model reads
    model = mlflow.pyfunc.load_model(str(save_bundle_model(bundle, tmp_path / "model")))
    png = encode_png(item_images()[3])
    out = model.predict(pd.DataFrame({"image": [png, png, png], "user_id": [1, 99, -1]}), params={"k": 5})
    ids = out["item_ids"].tolist()
    assert all(len(row) == 5 and len(set(row)) == 5 for row in ids)  # k distinct, existing items
    assert set(sum(ids, [])) <= set(range(100, 140))
    assert ids[1] == ids[2] and out["scores"][1] == out["scores"][2]  # an unknown user is served as anonymous


def test_bundle_refuses_a_project_without_the_checkpoint(tmp_path):
    root = make_tiny_project(tmp_path / "project", serving={"retriever": "onevision"})
    with pytest.raises(FileNotFoundError, match="missing models/generative/dpo"):
        build_bundle(load_config(root / "params.yaml"), root, tmp_path / "bundle")
