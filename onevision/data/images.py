"""The one image loader: encoded bytes in a Parquet column or a file path.

Everything that reads an image (encoder training, validation, serving) goes
through :func:`decode_image` / :func:`load_image`, so the same checks apply
everywhere: the bytes must decode, the pixel count is bounded (decompression
bombs), and the result is a ``uint8`` array of shape ``(H, W)`` (grayscale) or
``(H, W, 3)`` (RGB).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own bomb guard warns at ~89 MP; product photos never come near this.
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An image could not be read or has the wrong shape; the message says why."""


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a ``uint8`` (H, W) or (H, W, 3) array as PNG; deterministic bytes."""
    if pixels.dtype != np.uint8:
        raise ImageError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ImageError(f"expected shape (H, W) or (H, W, 3), got {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_image(data: bytes, mode: str | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to a uint8 array; ``mode`` 'L' or 'RGB' converts."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageError("image is empty or not bytes")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"image of {img.width}x{img.height} exceeds the pixel limit of {MAX_PIXELS}")
            if img.format not in ("PNG", "JPEG"):
                raise ImageError(f"unsupported image format {img.format}; use PNG or JPEG")
            img.load()
            if mode is not None:
                img = img.convert(mode)
            elif img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image exceeds the pixel limit (decompression bomb?): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image does not decode: {exc}") from exc


def resolve_image_path(image_path: str, image_root: str | Path) -> Path:
    """Resolve a relative image path inside ``image_root``; refuse escapes (``..``, absolute, symlinks out)."""
    root = Path(image_root).resolve()
    candidate = (root / image_path).resolve()
    if Path(image_path).is_absolute() or not candidate.is_relative_to(root):
        raise ImageError(f"image path {image_path!r} points outside {root}")
    return candidate


def load_image(image: bytes | None, image_path: str | None, image_root: str | Path | None = None, mode: str | None = None) -> np.ndarray:
    """Load a row's image from its ``image`` bytes or its ``image_path`` under ``image_root``."""
    if image is not None and not (isinstance(image, float) and np.isnan(image)):
        return decode_image(image, mode)
    if image_path:
        if image_root is None:
            raise ImageError(f"image_path {image_path!r} given but no image root")
        path = resolve_image_path(image_path, image_root)
        if not path.is_file():
            raise ImageError(f"image file {image_path!r} not found under {image_root}")
        return decode_image(path.read_bytes(), mode)
    raise ImageError("row has neither image bytes nor image_path")
