"""The image encoder every other stage uses: embeddings and visual tokens.

Consumers (VRQ, MCA, evaluation, the generative model, serving) code against
this module only::

    from onevision.encoder.api import ImageEncoder, decode_image_column, load_item_embeddings

    encoder = ImageEncoder.load(root / ENCODER_DIR)
    images = decode_image_column(queries, image_root=cfg.data.import_dir, channels=cfg.data.image_channels)
    emb = encoder.embed(images)              # (N, dim) float32, L2-normalised
    tokens = encoder.visual_tokens(images)   # (N, T, token_dim) float32
    item_ids, item_emb = load_item_embeddings(root)  # fused catalog-view embeddings

Stage ``align_encoder`` writes ``models/encoder/`` (this class, saved) and
``data/embeddings/items.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from onevision import atomic, paths
from onevision.data.images import ImageError, load_image
from onevision.encoder.model import EncoderNet, EncoderSpec

ENCODER_DIR = paths.MODELS / "encoder"
EMBEDDINGS_DIR = paths.DATA / "embeddings"
ITEM_EMBEDDINGS = EMBEDDINGS_DIR / "items.npz"
VIEW_EMBEDDINGS = EMBEDDINGS_DIR / "views.npz"
# `kind` codes of views.npz, in the order save_view_embeddings takes its parts
CATALOG, TRAIN_QUERY, VAL_QUERY = 0, 1, 2
_SPEC_FILE = "encoder.json"
_WEIGHTS_FILE = "weights.pt"
_FORMAT = 1


class ImageEncoder:
    """Aligned image encoder (OneVision, arXiv 2510.05759, §vision alignment).

    Wraps :class:`~onevision.encoder.model.EncoderNet` for inference on numpy
    images: ``uint8`` (N, H, W) grayscale or (N, H, W, 3) RGB, any size (resized
    to the encoder's input size; gray/RGB converted to what the backbone wants).
    """

    def __init__(self, net: EncoderNet, *, fusion: str = "mean", extra: dict | None = None):
        self.net = net.eval()
        self.fusion = fusion  # how catalog views were fused into item embeddings (recorded, see fuse_views)
        self.extra = dict(extra or {})  # free-form facts saved with the encoder (training summary)

    # ------------------------------------------------------------------ properties
    @property
    def spec(self) -> EncoderSpec:
        return self.net.spec

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.net.spec.embed_dim

    @property
    def token_dim(self) -> int:
        """Size of one visual token (channels of the backbone's last feature map)."""
        return self.net.token_dim

    @property
    def num_tokens(self) -> int:
        """Visual tokens per image (token_grid x token_grid feature-map cells)."""
        return self.net.spec.token_grid**2

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "spec": self.spec.to_dict(), "fusion": self.fusion, "extra": self.extra}
        atomic.write_json(directory / _SPEC_FILE, meta)
        # A file object, not a path: torch names the archive's records after a path's stem (here a random temp name).
        with atomic.atomic_path(directory / _WEIGHTS_FILE) as tmp, open(tmp, "wb") as f:
            torch.save(self.net.state_dict(), f)

    @classmethod
    def load(cls, directory: str | Path) -> ImageEncoder:
        directory = Path(directory)
        spec_path = directory / _SPEC_FILE
        if not spec_path.exists():
            raise FileNotFoundError(f"no saved encoder in {directory} (expected {_SPEC_FILE}); run stage align_encoder")
        meta = json.loads(spec_path.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"encoder in {directory} has format {meta.get('format')}, this code reads {_FORMAT}")
        net = EncoderNet(EncoderSpec(**meta["spec"]))  # the state dict brings any pretrained weights
        net.load_state_dict(torch.load(directory / _WEIGHTS_FILE, map_location="cpu", weights_only=True))
        return cls(net, fusion=meta.get("fusion", "mean"), extra=meta.get("extra"))

    # ------------------------------------------------------------------ inference
    def _eval(self) -> None:
        """Inference mode for the network; ``eval()`` walks every module (~0.15 ms, a tenth of a batch-1 search), so
        only when a caller left it training."""
        if self.net.training:
            self.net.eval()

    def _batches(self, images: np.ndarray, batch_size: int):
        images = _check_images(images)
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            yield self.net(self.net.preprocess(batch))

    @torch.inference_mode()
    def embed(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """uint8 (N, H, W) or (N, H, W, 3) -> float32 (N, dim), L2-normalised."""
        self._eval()
        out = [emb.numpy() for emb, _ in self._batches(images, batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def embed_and_tokens(self, images: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Both :meth:`embed` and :meth:`visual_tokens` from one forward pass."""
        self._eval()
        embs, toks = [], []
        for emb, fmap in self._batches(images, batch_size):
            embs.append(emb.numpy())
            toks.append(self.net.tokens(fmap).numpy())
        if not embs:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, self.num_tokens, self.token_dim), np.float32)
        return np.concatenate(embs).astype(np.float32), np.concatenate(toks).astype(np.float32)

    @torch.inference_mode()
    def visual_tokens(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """uint8 images -> float32 (N, T, token_dim): pooled cells of the last feature map, row-major."""
        self._eval()
        out = [self.net.tokens(fmap).numpy() for _, fmap in self._batches(images, batch_size)]
        if not out:
            return np.zeros((0, self.num_tokens, self.token_dim), np.float32)
        return np.concatenate(out).astype(np.float32)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"expected images of shape (N, H, W) or (N, H, W, 3), got {images.shape}")
    return images


def fuse_views(view_emb: np.ndarray, owner: np.ndarray, n_items: int, fusion: str = "mean", temperature: float = 0.1) -> np.ndarray:
    """Fuse per-view embeddings into one L2-normalised embedding per item.

    ``owner[v]`` is the row (0..n_items-1) of view ``v``'s item. ``mean``: the
    normalised mean of the views. ``attention``: consensus attention, each
    view weighted by ``softmax(cos(view, mean of the item's views) / temperature)``
    so that an outlier view (occluded, badly lit) counts less; parameter-free,
    so it needs no training and degrades to ``mean`` for single-view items.
    """
    view_emb = view_emb.astype(np.float32)
    d = view_emb.shape[1]
    mean = np.zeros((n_items, d), np.float32)
    np.add.at(mean, owner, view_emb)
    counts = np.bincount(owner, minlength=n_items).astype(np.float32)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} items have no view to fuse")
    mean /= counts[:, None]
    if fusion == "attention":
        centre = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        score = (view_emb * centre[owner]).sum(1) / temperature  # (V,)
        score -= score.max()  # numerically safe; softmax is shift-invariant per item too
        w = np.exp(score)
        z = np.zeros(n_items, np.float64)
        np.add.at(z, owner, w)
        mean = np.zeros((n_items, d), np.float32)
        np.add.at(mean, owner, view_emb * (w / z[owner])[:, None].astype(np.float32))
    elif fusion != "mean":
        raise ValueError(f"unknown fusion {fusion!r}; use mean or attention")
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def decode_image_column(frame: pd.DataFrame, image_root=None, channels: int = 1) -> np.ndarray:
    """Rows with ``image`` (bytes) and/or ``image_path`` -> uint8 (N, H, W) (channels=1) or (N, H, W, 3)."""

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if "image" not in frame.columns and "image_path" not in frame.columns:
        raise ValueError("frame has neither an 'image' nor an 'image_path' column")
    mode = "L" if channels == 1 else "RGB"
    blobs = frame["image"].tolist() if "image" in frame.columns else [None] * len(frame)
    rel = frame["image_path"].tolist() if "image_path" in frame.columns else [None] * len(frame)
    images = [load_image(b, p if isinstance(p, str) else None, image_root, mode=mode) for b, p in zip(blobs, rel, strict=True)]
    if not images:
        return np.zeros((0, 0, 0) if channels == 1 else (0, 0, 0, 3), np.uint8)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ImageError(f"images differ in shape ({sorted(shapes)[:3]}...); the prepare stage resizes them to data.image_size")
    return np.stack(images)


def load_item_embeddings(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids int64 (N,), embeddings float32 (N, dim)) from ``data/embeddings/items.npz`` under ``root``."""
    path = Path(root) / ITEM_EMBEDDINGS
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run stage align_encoder")
    with np.load(path) as data:
        return data["item_ids"].astype(np.int64), data["embeddings"].astype(np.float32)


def save_item_embeddings(root: Path, item_ids: np.ndarray, embeddings: np.ndarray) -> Path:
    path = Path(root) / ITEM_EMBEDDINGS
    with atomic.atomic_path(path) as tmp:
        np.savez(tmp, item_ids=item_ids.astype(np.int64), embeddings=embeddings.astype(np.float32))
    return path


def save_view_embeddings(root: Path, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    """``data/embeddings/views.npz``: every embedded photo with its item (stage vrq aligns codes on them).

    ``parts`` = [(item_ids, ids, embeddings)] for catalog views, TRAIN queries and
    VAL queries, in that order (``kind`` 0, 1, 2); ``ids`` are view_id / query_id.
    """
    path = Path(root) / VIEW_EMBEDDINGS
    with atomic.atomic_path(path) as tmp:
        np.savez(
            tmp,
            item_ids=np.concatenate([np.asarray(i, np.int64) for i, _, _ in parts]),
            ids=np.concatenate([np.asarray(j, np.int64) for _, j, _ in parts]),
            kind=np.concatenate([np.full(len(i), k, np.int8) for k, (i, _, _) in enumerate(parts)]),
            embeddings=np.concatenate([np.asarray(e, np.float32) for _, _, e in parts]),
        )
    return path


def load_view_embeddings(root: Path) -> dict[str, np.ndarray]:
    """``views.npz`` under ``root``: item_ids, ids, kind (CATALOG / TRAIN_QUERY / VAL_QUERY), embeddings."""
    path = Path(root) / VIEW_EMBEDDINGS
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run stage align_encoder")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
