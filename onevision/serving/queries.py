"""Serving requests -> model inputs, with every check a bad request deserves.

A query is one image (PNG or JPEG; raw bytes, or a base64 string as JSON
carries them) and an optional user id. Images are decoded by the one image
loader, :mod:`onevision.data.images`, so serving applies the same rules as
training data (format, pixel bound against decompression bombs) plus the
model's own: the encoded size is bounded and the decoded image must have the
side and channels the model was trained on. Every failure is an
:class:`InvalidQuery` whose message names the row and the reason; the pyfunc
model turns it into an HTTP 400.

User ids: ``-1`` (or no ``user_id`` column) is an anonymous shopper. An id the
model has never seen is served as anonymous too (image-only context), never an
error: new shoppers arrive every day.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onevision.data.images import ImageError, decode_image

ANONYMOUS = -1


class InvalidQuery(ValueError):
    """A request the model cannot answer; the message says what to change (HTTP 400)."""


@dataclass(frozen=True)
class QuerySpec:
    """What the bundled model accepts (stored in the bundle manifest)."""

    image_size: int = 28  # side of the square images the encoder was trained on
    image_channels: int = 1  # 1: grayscale, 3: RGB
    max_image_bytes: int = 5_000_000  # encoded size bound, checked before decoding
    default_k: int = 10
    max_k: int = 100

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuerySpec:
        return cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})


def image_bytes(value: Any, max_bytes: int) -> bytes:
    """Raw bytes, or a base64 string (JSON has no bytes) -> the encoded image."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        # base64 grows 4/3: refuse an oversized payload before decoding it.
        if len(value) > max_bytes * 4 // 3 + 4:
            raise InvalidQuery(f"image is larger than {max_bytes} bytes")
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidQuery(f"image string is not valid base64 ({exc})") from None
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        raise InvalidQuery("image is missing")
    else:
        raise InvalidQuery(f"image must be PNG/JPEG bytes or a base64 string, got {type(value).__name__}")
    if not data:
        raise InvalidQuery("image is empty")
    if len(data) > max_bytes:
        raise InvalidQuery(f"image of {len(data)} bytes is larger than the {max_bytes} byte limit")
    return data


def decode_query_image(value: Any, spec: QuerySpec) -> np.ndarray:
    """One request image -> uint8 (S, S) or (S, S, 3) with S = spec.image_size."""
    data = image_bytes(value, spec.max_image_bytes)
    try:
        pixels = decode_image(data)
    except ImageError as exc:
        raise InvalidQuery(str(exc)) from None
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels != spec.image_channels:
        kind = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}
        raise InvalidQuery(f"model expects {kind[spec.image_channels]} images, got {kind[channels]}")
    if pixels.shape[:2] != (spec.image_size, spec.image_size):
        raise InvalidQuery(
            f"model expects {spec.image_size}x{spec.image_size} images, got {pixels.shape[1]}x{pixels.shape[0]}"
        )
    return pixels


def user_ids_of(values: Any, n: int) -> np.ndarray:
    """The ``user_id`` column (or None) -> int64 (n,), -1 for anonymous rows."""
    if values is None:
        return np.full(n, ANONYMOUS, np.int64)
    out = np.empty(n, np.int64)
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            out[i] = ANONYMOUS
            continue
        try:
            out[i] = int(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidQuery(f"row {i}: user_id must be an integer (-1: anonymous), got {value!r}") from None
        if out[i] != value:
            raise InvalidQuery(f"row {i}: user_id must be an integer (-1: anonymous), got {value!r}")
    return out


def parse_queries(frame, spec: QuerySpec) -> tuple[np.ndarray, np.ndarray]:
    """A request table (``image``, optional ``user_id``) -> images (Q, S, S[, 3]) uint8, user ids (Q,) int64."""
    if "image" not in getattr(frame, "columns", ()):
        raise InvalidQuery("request has no 'image' column")
    if len(frame) == 0:
        raise InvalidQuery("request has no rows")
    images = []
    for i, value in enumerate(frame["image"].tolist()):
        try:
            images.append(decode_query_image(value, spec))
        except InvalidQuery as exc:
            raise InvalidQuery(f"row {i}: {exc}") from None
    users = frame["user_id"].tolist() if "user_id" in frame.columns else None
    return np.stack(images), user_ids_of(users, len(images))


def parse_k(params: dict[str, Any] | None, spec: QuerySpec) -> int:
    """The ``k`` request parameter (default spec.default_k), bounded by spec.max_k."""
    raw = (params or {}).get("k", spec.default_k)
    if raw is None:
        return spec.default_k
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise InvalidQuery(f"k must be an integer, got {raw!r}") from None
    if not 1 <= k <= spec.max_k:
        raise InvalidQuery(f"k must be between 1 and {spec.max_k}, got {k}")
    return k
