"""What the drift monitor compares, per query: image, embedding, product and user features, quality.

:func:`window_features` turns a window of query-log rows into one flat frame
(one row per query) that Evidently compares column by column:

* ``pc00..``: the query-image embedding projected on principal components
  fitted on the reference (:class:`Projection`). The embedding comes from the
  aligned encoder in ``models/encoder/`` when it exists, else from grayscale
  pixels downsampled to ``drift.pixel_side`` (the fallback is reported as such);
* ``brightness, contrast, sharpness``: photo statistics that name the usual
  culprits of an image alarm (exposure, flat light, blur);
* ``category, brand, price``: the product of the session (the log's columns
  when present, else joined from the catalog by ``item_id``);
* ``region``: the user's region (``anonymous`` for ``user_id == -1``);
* ``quality_issue``: the first data-quality problem of the row, ``ok`` if none.

Rows whose image is missing, undecodable or of the wrong shape keep NaN image
columns, so image checks see only real photos and the quality check counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from PIL import Image

from onevision import paths
from onevision.config import Config
from onevision.data.images import ImageError, load_image

log = logging.getLogger(__name__)

IMAGE_STATS = ("brightness", "contrast", "sharpness")
PRODUCT_CATEGORICAL = ("category", "brand")
PRODUCT_NUMERICAL = ("price",)
USER_CATEGORICAL = ("region",)
ANONYMOUS_USER = -1
OK = "ok"
# Data-quality issues, in the order they are checked (a row reports its first one).
QUALITY_ISSUES = (
    "image_missing",
    "image_undecodable",
    "image_wrong_shape",
    "user_missing",
    "user_unknown",
    "product_missing",  # no category/price in the log and item_id not in the catalog
    "price_out_of_range",  # <= 0 or not finite
    "category_unknown",  # a category code the catalog does not have
    "ts_missing",
)


def pc_columns(n: int) -> list[str]:
    return [f"pc{i:02d}" for i in range(n)]


# --------------------------------------------------------------------------- catalog


@dataclass
class Catalog:
    """What a window is joined against: products, users and the expected image shape."""

    items: pd.DataFrame  # item_id, category, brand, price
    users: pd.DataFrame  # user_id, region
    image_size: int
    channels: int
    image_root: str | None = None

    @classmethod
    def load(cls, cfg: Config, root: Path) -> Catalog:
        folder = Path(root) / paths.VALIDATED
        items = pd.read_parquet(folder / "items.parquet", columns=["item_id", "category", "brand", "price"])
        users = pd.read_parquet(folder / "users.parquet", columns=["user_id", "region"])
        return cls(items, users, cfg.data.image_size, cfg.data.image_channels, cfg.data.import_dir)

    @property
    def categories(self) -> set[str]:
        return set(self.items["category"].astype(str))


# --------------------------------------------------------------------------- images


def decode_window_images(frame: pd.DataFrame, catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, S, S[, 3]) with zeros where unusable, status (N,) str: ok or an image_* issue)."""
    n, s = len(frame), catalog.image_size
    shape = (s, s) if catalog.channels == 1 else (s, s, 3)
    mode = "L" if catalog.channels == 1 else "RGB"
    images = np.zeros((n, *shape), dtype=np.uint8)
    status = np.full(n, OK, dtype=object)
    blobs = frame["image"].tolist() if "image" in frame.columns else [None] * n
    rel = frame["image_path"].tolist() if "image_path" in frame.columns else [None] * n
    for i, (blob, path) in enumerate(zip(blobs, rel, strict=True)):
        blob = None if blob is None or (isinstance(blob, float) and np.isnan(blob)) else blob
        path = path if isinstance(path, str) and path else None
        if blob is None and path is None:
            status[i] = "image_missing"
            continue
        try:
            pixels = load_image(blob, path, catalog.image_root, mode=mode)
        except ImageError:
            status[i] = "image_undecodable"
            continue
        if pixels.shape != shape:
            status[i] = "image_wrong_shape"
            continue
        images[i] = pixels
    return images, status


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """Per photo: brightness (mean), contrast (std) and sharpness (mean |Laplacian|), all in [0, 1] units of 255."""
    x = images.astype(np.float32) / 255.0
    if x.ndim == 4:
        x = x.mean(axis=-1)  # (N, S, S) grey
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]  # (N, S-2, S-2)
    return pd.DataFrame(
        {
            "brightness": x.mean(axis=(1, 2)),
            "contrast": x.std(axis=(1, 2)),
            "sharpness": np.abs(lap).mean(axis=(1, 2)),
        }
    ).astype(np.float64)


# --------------------------------------------------------------------------- embeddings


class ImageEmbedder(Protocol):
    name: str  # what produced the embeddings (reported in the summary)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, S, S[, 3]) -> float32 (N, D)."""
        ...


class EncoderEmbedder:
    """The aligned encoder from ``models/encoder/``: the embedding space the models search in."""

    def __init__(self, directory: Path):
        # lazy: torch only when the monitor embeds photos with the aligned encoder
        from onevision.encoder.api import ImageEncoder

        self.encoder = ImageEncoder.load(directory)
        self.name = f"encoder:{paths.MODELS / 'encoder'}"
        self.is_encoder = True

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.embed(images)


class PixelEmbedder:
    """Fallback without an encoder: grayscale pixels area-downsampled to ``side`` x ``side``."""

    is_encoder = False

    def __init__(self, side: int):
        self.side = side
        self.name = f"fallback:pixels-{side}x{side} (no aligned encoder in {paths.MODELS / 'encoder'})"

    def embed(self, images: np.ndarray) -> np.ndarray:
        x = images.mean(axis=-1) if images.ndim == 4 else images  # (N, S, S)
        if x.shape[1] % self.side == 0:
            f = x.shape[1] // self.side
            small = x.reshape(len(x), self.side, f, self.side, f).mean(axis=(2, 4))
        else:
            small = np.stack(
                [np.asarray(Image.fromarray(np.uint8(a)).resize((self.side, self.side), Image.Resampling.BOX), np.float32) for a in x]
            ) if len(x) else np.zeros((0, self.side, self.side), np.float32)
        return (small.reshape(len(x), -1) / 255.0).astype(np.float32)


def image_embedder(cfg: Config, root: Path) -> ImageEmbedder:
    """The aligned encoder when ``models/encoder/`` holds one, else the documented pixel fallback."""
    directory = Path(root) / paths.MODELS / "encoder"
    if (directory / "encoder.json").exists():
        return EncoderEmbedder(directory)
    log.warning("drift: no aligned encoder in %s; image embedding drift uses downsampled pixels instead", directory)
    return PixelEmbedder(cfg.drift.pixel_side)


@dataclass
class Projection:
    """PCA fitted on the reference embeddings; current windows are projected on the same axes."""

    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (D, K)
    explained: np.ndarray  # (K,) share of reference variance per component

    @classmethod
    def fit(cls, emb: np.ndarray, components: int) -> Projection:
        x = emb.astype(np.float64)
        mean = x.mean(axis=0)
        x = x - mean
        k = max(1, min(components, x.shape[1], len(x) - 1))
        # SVD of the centred data: deterministic up to sign; fix signs so runs agree.
        _, sv, vt = np.linalg.svd(x, full_matrices=False)
        axes = vt[:k].T  # (D, K)
        signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
        axes = axes * np.where(signs == 0, 1.0, signs)
        var = sv**2
        return cls(mean, axes, (var[:k] / max(var.sum(), 1e-12)))

    def transform(self, emb: np.ndarray) -> np.ndarray:
        return (emb.astype(np.float64) - self.mean) @ self.axes  # (N, K)


# --------------------------------------------------------------------------- table features


def product_and_user_features(frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """category, brand, price (the log's own columns first, else the catalog's) and region."""
    n = len(frame)
    out = pd.DataFrame(index=pd.RangeIndex(n))
    item_ids = pd.to_numeric(frame["item_id"], errors="coerce") if "item_id" in frame.columns else pd.Series(np.nan, index=range(n))
    joined = pd.DataFrame({"item_id": item_ids.to_numpy()}).merge(catalog.items, on="item_id", how="left")
    for col in (*PRODUCT_CATEGORICAL, *PRODUCT_NUMERICAL):
        own = frame[col].reset_index(drop=True) if col in frame.columns else pd.Series([None] * n, dtype=object)
        value = own.where(own.notna(), joined[col].to_numpy()) if col in frame.columns else joined[col]
        out[col] = value.to_numpy()
    out["category"] = out["category"].map(lambda v: None if pd.isna(v) else str(int(v)) if isinstance(v, (int, float, np.number)) else str(v))
    out["brand"] = out["brand"].map(lambda v: None if pd.isna(v) else str(v))
    out["price"] = pd.to_numeric(out["price"], errors="coerce").astype(np.float64)

    user_ids = pd.to_numeric(frame["user_id"], errors="coerce") if "user_id" in frame.columns else pd.Series(np.nan, index=range(n))
    region = pd.DataFrame({"user_id": user_ids.to_numpy()}).merge(catalog.users, on="user_id", how="left")["region"]
    region = region.astype(object).where(region.notna(), None)
    region[(user_ids == ANONYMOUS_USER).to_numpy()] = "anonymous"
    out["region"] = region.to_numpy()
    return out


def quality_issues(frame: pd.DataFrame, features: pd.DataFrame, image_status: np.ndarray, catalog: Catalog) -> np.ndarray:
    """The first data-quality issue of each row (``ok`` when none), in :data:`QUALITY_ISSUES` order."""
    n = len(frame)
    user_ids = pd.to_numeric(frame["user_id"], errors="coerce") if "user_id" in frame.columns else pd.Series(np.nan, index=range(n))
    known_users = set(catalog.users["user_id"].tolist())
    price = features["price"].to_numpy()
    ts = pd.to_datetime(frame["ts"], utc=True, errors="coerce") if "ts" in frame.columns else pd.Series(pd.NaT, index=range(n))
    checks = {
        "user_missing": user_ids.isna().to_numpy(),
        "user_unknown": (user_ids.notna() & (user_ids != ANONYMOUS_USER) & ~user_ids.isin(known_users)).to_numpy(),
        "product_missing": (features["category"].isna() | features["price"].isna()).to_numpy(),
        "price_out_of_range": features["price"].notna().to_numpy() & ~(np.isfinite(price) & (price > 0)),
        "category_unknown": (features["category"].notna() & ~features["category"].isin(catalog.categories)).to_numpy(),
        "ts_missing": ts.isna().to_numpy(),
    }
    issue = np.array(image_status, dtype=object)
    for name in QUALITY_ISSUES:
        if name in checks:
            issue = np.where((issue == OK) & checks[name], name, issue)
    return issue


@dataclass
class WindowFeatures:
    """One window's monitored frame plus its raw embeddings (for SID assignment)."""

    frame: pd.DataFrame  # pc.., image stats, product/user features, quality_issue
    embeddings: np.ndarray  # (N, D) float32; zero rows where the image is unusable
    images: np.ndarray  # (N, S, S[, 3]) uint8
    image_ok: np.ndarray  # (N,) bool


def window_features(frame: pd.DataFrame, catalog: Catalog, embedder: ImageEmbedder) -> WindowFeatures:
    """Decode, describe and embed a window (projection onto components happens later)."""
    images, status = decode_window_images(frame, catalog)
    ok = status == OK
    stats = image_statistics(images)
    stats[~ok] = np.nan
    emb = embedder.embed(images[ok]) if ok.any() else np.zeros((0, 1), np.float32)
    full = np.zeros((len(frame), emb.shape[1]), dtype=np.float32)
    full[ok] = emb
    table = product_and_user_features(frame, catalog)
    out = pd.concat([stats, table], axis=1)
    out["quality_issue"] = quality_issues(frame, table, status, catalog)
    return WindowFeatures(out, full, images, ok)


def add_components(features: WindowFeatures, projection: Projection) -> pd.DataFrame:
    """The monitored frame with the embedding's principal components (NaN where the image is unusable)."""
    k = projection.axes.shape[1]
    pcs = np.full((len(features.frame), k), np.nan)
    if features.image_ok.any():
        pcs[features.image_ok] = projection.transform(features.embeddings[features.image_ok])
    return pd.concat([pd.DataFrame(pcs, columns=pc_columns(k)), features.frame], axis=1)
