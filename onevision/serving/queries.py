"""Serving requests -> model inputs, with every check a bad request deserves.

A query is one photo (PNG or JPEG, any size, any orientation: raw bytes, or a
base64 string as JSON carries them, a ``data:image/...;base64,`` prefix
allowed) and an optional user id. Photos are normalised by
:func:`onevision.data.images.normalize_photo`, exactly as catalog photos are
at import: upright by their EXIF tag, centre-cropped to a square, resized to
the side the model was trained on and converted to its channels (transparency
on white, 16-bit scaled to 8 bits). Refused: anything that is not PNG or JPEG
or does not decode, an empty image, more encoded bytes than
``max_image_bytes`` (checked before decoding) and more pixels than the image
loader's bound (checked on the header, before decoding: decompression bombs).
Every failure is an :class:`InvalidQuery` whose message names the row, the
reason and what to send instead; the pyfunc model turns it into an HTTP 400.

User ids: ``-1`` (or no ``user_id`` column) is an anonymous shopper. An id the
model has never seen is served as anonymous too (image-only context), never an
error: new shoppers arrive every day.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onevision.data.images import ImageError, normalize_photo

ANONYMOUS = -1
DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)  # what a browser's FileReader gives
TOO_BIG_FIX = "send a smaller photo (a JPEG of about 1000 pixels a side is plenty; the model sees it resized)"


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
        value = DATA_URL.sub("", value.lstrip(), count=1)
        # base64 grows 4/3: refuse an oversized payload before decoding it.
        if len(value) > max_bytes * 4 // 3 + 4:
            raise InvalidQuery(f"image is larger than {max_bytes} bytes: {TOO_BIG_FIX}")
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidQuery(f"image string is not valid base64 ({exc}): send the photo file's bytes base64-encoded (standard alphabet)") from None
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        raise InvalidQuery("image is missing: put the photo's PNG or JPEG bytes in the 'image' column")
    else:
        raise InvalidQuery(f"image must be PNG/JPEG bytes or a base64 string, got {type(value).__name__}")
    if not data:
        raise InvalidQuery("image is empty: send the photo's PNG or JPEG bytes")
    if len(data) > max_bytes:
        raise InvalidQuery(f"image of {len(data)} bytes is larger than the {max_bytes} byte limit: {TOO_BIG_FIX}")
    return data


def decode_query_image(value: Any, spec: QuerySpec) -> np.ndarray:
    """One request photo -> uint8 (S, S) or (S, S, 3), S = spec.image_size, normalised as at import."""
    data = image_bytes(value, spec.max_image_bytes)
    try:
        return normalize_photo(data, spec.image_size, spec.image_channels)
    except ImageError as exc:
        raise InvalidQuery(str(exc)) from None


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
        raise InvalidQuery("request has no 'image' column: send one row per query with 'image' (the photo) and optionally 'user_id'")
    if len(frame) == 0:
        raise InvalidQuery("request has no rows: send one row per query photo")
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
        if isinstance(raw, float) and k != raw:
            raise ValueError(raw)  # 2.5 is not a number of results
    except (TypeError, ValueError, OverflowError):  # OverflowError: k = inf
        raise InvalidQuery(f"k must be an integer between 1 and {spec.max_k}, got {raw!r}") from None
    if not 1 <= k <= spec.max_k:
        raise InvalidQuery(f"k must be between 1 and {spec.max_k}, got {k}")
    return k
