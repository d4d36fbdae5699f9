"""The pyfunc model over a generative (OneVision) bundle: saved, loaded by MLflow, answering queries."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from onevision.config import load_config
from onevision.data.images import encode_png
from onevision.serving.bundle import build_bundle, read_manifest
from onevision.serving.pyfunc import save_bundle_model
from tests.support.projects import build_project
from tests.support.tiny_trained import add_generative_checkpoint, item_images

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_generative_bundle_serves_through_pyfunc(tmp_path):
    root = build_project(tmp_path / "project", "tiny-trained", overrides=["serving.retriever=onevision", "serving.stage=dpo"]).root
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
    # A full-size phone-like JPEG (1200 x 900 RGB, EXIF-rotated) is normalised to the model's 28 x 28 grayscale, not refused.
    photo = Image.fromarray(np.kron(item_images()[3], np.ones((33, 43), np.uint8))[:900, :1200]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=85, exif=exif.tobytes())
    out = model.predict(pd.DataFrame({"image": [buf.getvalue()], "user_id": [-1]}), params={"k": 5})
    assert len(out["item_ids"][0]) == 5 and set(out["item_ids"][0]) <= set(range(100, 140))


def test_bundle_refuses_a_project_without_the_checkpoint(tmp_path):
    root = build_project(tmp_path / "project", "tiny-trained", overrides=["serving.retriever=onevision"]).root
    with pytest.raises(FileNotFoundError, match="missing models/generative/dpo"):
        build_bundle(load_config(root / "params.yaml"), root, tmp_path / "bundle")
