"""ImageEncoder API: shapes, normalisation, persistence, image decoding, fusion, embeddings files."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from onevision.data.images import encode_png
from onevision.encoder.api import (
    CATALOG,
    TRAIN_QUERY,
    ImageEncoder,
    decode_image_column,
    fuse_views,
    load_item_embeddings,
    load_view_embeddings,
    save_item_embeddings,
    save_view_embeddings,
)
from onevision.encoder.batch_augment import random_views
from onevision.encoder.model import EncoderNet, EncoderSpec


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(EncoderNet(EncoderSpec(width=8, hidden_dim=32, embed_dim=16, token_grid=4)))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)


def test_embed_shapes_dtype_and_unit_norm(encoder, images):
    emb = encoder.embed(images, batch_size=4)
    assert emb.shape == (10, encoder.dim) == (10, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # batching does not change the result (eval mode: batch norm uses running statistics)
    np.testing.assert_allclose(encoder.embed(images, batch_size=512), emb, atol=1e-6)
    assert encoder.embed(images[:0]).shape == (0, 16)


def test_visual_tokens_shape(encoder, images):
    tokens = encoder.visual_tokens(images[:3])
    assert tokens.shape == (3, encoder.num_tokens, encoder.token_dim) == (3, 16, 16)
    assert tokens.dtype == np.float32


def test_rgb_and_other_sizes_are_accepted(encoder, images):
    rgb = np.repeat(images[..., None], 3, axis=3)
    np.testing.assert_allclose(encoder.embed(rgb), encoder.embed(images), atol=1e-2)  # luma of gray RGB = gray (rounding aside)
    big = np.kron(images, np.ones((2, 2), np.uint8))  # 56x56
    assert encoder.embed(big).shape == (10, 16)
    with pytest.raises(ValueError, match="uint8"):
        encoder.embed(images.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        encoder.embed(images[0])


def test_save_load_gives_identical_outputs(encoder, images, tmp_path):
    encoder.extra = {"probe_top1": 0.5}
    encoder.save(tmp_path / "enc")
    back = ImageEncoder.load(tmp_path / "enc")
    assert back.dim == encoder.dim and back.token_dim == encoder.token_dim and back.extra == {"probe_top1": 0.5}
    np.testing.assert_array_equal(back.embed(images), encoder.embed(images))
    np.testing.assert_array_equal(back.visual_tokens(images), encoder.visual_tokens(images))
    with pytest.raises(FileNotFoundError, match="align_encoder"):
        ImageEncoder.load(tmp_path / "nothing")


def test_decode_image_column_bytes_and_paths(tmp_path, images):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(encode_png(images[1]))
    frame = pd.DataFrame({"image": [encode_png(images[0]), None], "image_path": [None, "img/a.png"]})
    out = decode_image_column(frame, image_root=tmp_path)
    assert out.shape == (2, 28, 28) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, images[:2])
    rgb = decode_image_column(frame, image_root=tmp_path, channels=3)
    assert rgb.shape == (2, 28, 28, 3)
    with pytest.raises(ValueError, match="neither"):
        decode_image_column(pd.DataFrame({"x": [1]}))


def test_fuse_views_mean_and_attention():
    views = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    owner = np.array([0, 0, 1, 1, 1])
    mean = fuse_views(views, owner, 2, "mean")
    np.testing.assert_allclose(mean[0], [2**-0.5, 2**-0.5], rtol=1e-6)
    att = fuse_views(views, owner, 2, "attention")
    np.testing.assert_allclose(np.linalg.norm(att, axis=1), 1.0, rtol=1e-6)
    # item 1: two views agree, one is the outlier -> attention leans further to the majority than the mean
    assert att[1, 0] > mean[1, 0]
    with pytest.raises(ValueError, match="no view"):
        fuse_views(views, owner, 3)


def test_embedding_files_round_trip(tmp_path):
    ids = np.array([5, 7], np.int64)
    emb = np.eye(2, 4, dtype=np.float32)
    save_item_embeddings(tmp_path, ids, emb)
    got_ids, got = load_item_embeddings(tmp_path)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, emb)
    save_view_embeddings(tmp_path, [(ids, np.array([1, 2]), emb), (ids[:1], np.array([9]), emb[:1]), (ids[:0], ids[:0], emb[:0])])
    views = load_view_embeddings(tmp_path)
    assert views["kind"].tolist() == [CATALOG, CATALOG, TRAIN_QUERY]
    assert views["ids"].tolist() == [1, 2, 9] and views["embeddings"].shape == (3, 4)


def test_random_views_keep_shape_range_and_seed():
    x = torch.rand(6, 1, 28, 28)
    a = random_views(x, torch.Generator().manual_seed(1), 1.0)
    b = random_views(x, torch.Generator().manual_seed(1), 1.0)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert torch.equal(random_views(x, torch.Generator().manual_seed(1), 0.0), x)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None, reason="optional extra [pretrained] not installed")
@pytest.mark.slow
def test_efficientnet_lite0_loads_offline(tmp_path, images):
    from onevision.encoder.model import default_lite0_weights

    net = EncoderNet(EncoderSpec(backbone="efficientnet_lite0", channels=3, image_size=64, embed_dim=16, hidden_dim=32, token_grid=2),
                     weights_path=default_lite0_weights())
    enc = ImageEncoder(net)
    assert enc.embed(images[:2]).shape == (2, 16)
    assert enc.visual_tokens(images[:2]).shape == (2, 4, 1280)
    enc.save(tmp_path / "lite")
    np.testing.assert_allclose(ImageEncoder.load(tmp_path / "lite").embed(images[:2]), enc.embed(images[:2]), atol=1e-6)
