"""Seeded augmentations (onevision.data.augment)."""

from __future__ import annotations

import numpy as np
import pytest

from onevision.data import augment as A


@pytest.fixture(scope="module")
def article() -> np.ndarray:
    """A synthetic 28x28 'article': a bright shape with texture on black."""
    rng = np.random.default_rng(0)
    img = np.zeros((28, 28), dtype=np.uint8)
    img[5:24, 8:20] = 180 + rng.integers(0, 60, size=(19, 12))
    img[5:10, 4:24] = 220
    return img


@pytest.fixture(scope="module")
def photo(article) -> np.ndarray:
    return np.stack([article, article // 2, 255 - article], axis=-1)  # (28, 28, 3) RGB


def test_deterministic_for_a_seed(article):
    a = A.augment(article, A.derive_rng(0, "query", 5), 1.0)
    b = A.augment(article, A.derive_rng(0, "query", 5), 1.0)
    c = A.augment(article, A.derive_rng(1, "query", 5), 1.0)
    d = A.augment(article, A.derive_rng(0, "catalog", 5), 1.0)
    assert (a == b).all()
    assert not (a == c).all() and not (a == d).all()


def test_batch_order_does_not_matter(article):
    images = [article, article[::-1].copy(), article.T.copy()]
    ids = [(3, 1), (4, 1), (5, 2)]
    forward = A.augment_many(images, 0, "catalog", ids, 0.35)
    backward = A.augment_many(images[::-1], 0, "catalog", ids[::-1], 0.35)[::-1]
    assert all((f == b).all() for f, b in zip(forward, backward, strict=True))
    single = A.augment(images[1], A.image_rng(0, "catalog", 4, 1), 0.35)
    assert (single == forward[1]).all()


@pytest.mark.parametrize("strength", [0.0, 0.35, 1.0, 3.0])
def test_shape_and_dtype_preserved(article, photo, strength):
    for img in (article, photo):
        out = A.augment(img, A.derive_rng(0, "x", 1), strength)
        assert out.shape == img.shape and out.dtype == np.uint8


def test_strength_zero_is_identity(article, photo):
    assert (A.augment(article, A.derive_rng(0, "x", 1), 0.0) == article).all()
    assert (A.augment(photo, A.derive_rng(0, "x", 1), 0.0) == photo).all()
    near = A.augment(article, A.derive_rng(0, "x", 1), 0.01)
    assert np.abs(near.astype(int) - article).mean() < 3


def test_stronger_means_further_from_the_original(article):
    def mean_diff(strength: float) -> float:
        outs = [A.augment(article, A.derive_rng(0, "s", i), strength) for i in range(60)]
        return float(np.mean([np.abs(o.astype(int) - article).mean() for o in outs]))

    mild, hard = mean_diff(A.CATALOG_STRENGTH), mean_diff(A.QUERY_STRENGTH)
    assert 0 < mild < hard


def test_named_transforms_identity_points(article, photo):
    for img in (article, photo):
        assert (A.relight(img, 1.0) == img).all()
        assert (A.contrast(img, 1.0) == img).all()
        assert (A.crop(img, 1.0) == img).all()
        assert (A.scale(img, 1.0) == img).all()
        assert (A.rotate(img, 0.0) == img).all()
        assert (A.blur(img, 0.0) == img).all()
        assert (A.hflip(A.hflip(img)) == img).all()
        assert (A.add_noise(img, 0.0, np.random.default_rng(0)) == img).all()


def test_named_transforms_do_what_they_say(article):
    assert (A.hflip(article) == article[:, ::-1]).all()
    assert A.relight(article, 0.5).mean() < article.mean() and A.relight(article, 0.0).max() == 0
    assert A.contrast(article, 0.5).std() < article.std()
    assert (A.rotate(article, 180.0) == article[::-1, ::-1]).all()
    assert A.blur(article, 1.5).std() < article.std()
    # crop zooms in: the bright shape covers more of the frame
    assert (A.crop(article, 0.6) > 0).mean() > (article > 0).mean()
    assert (A.scale(article, 0.5) > 0).mean() < (article > 0).mean()
    boxed = A.occlude(article, (0, 0, 4, 6), value=255)
    assert (boxed[:4, :6] == 255).all() and (boxed[4:] == article[4:]).all()
    noisy = A.add_noise(article, 10.0, np.random.default_rng(0))
    assert 4 < np.abs(noisy.astype(int) - article).mean() < 12


def test_geometric_fill_uses_the_background():
    white = np.full((28, 28), 250, dtype=np.uint8)
    white[10:18, 10:18] = 20
    assert A.background(white) == 250
    assert A.scale(white, 0.5)[0, 0] == 250
    assert A.rotate(white, 45)[0, 0] == 250


def test_rejects_bad_input(article):
    with pytest.raises(ValueError, match="uint8"):
        A.augment(article.astype(np.float32), A.derive_rng(0, "x"), 1.0)
    with pytest.raises(ValueError, match="strength"):
        A.augment(article, A.derive_rng(0, "x"), -1.0)
    with pytest.raises(ValueError, match="crop fraction"):
        A.crop(article, 0.0)
