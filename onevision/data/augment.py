"""Seeded image augmentations: catalog views, shopper query photos, drift drills.

Pure numpy + PIL on ``uint8`` images of shape ``(H, W)`` or ``(H, W, 3)``;
every function returns a new array of the same shape and dtype.

Two layers:

* named single transforms with explicit parameters (``crop``, ``scale``,
  ``rotate``, ``hflip``, ``relight``, ``contrast``, ``occlude``, ``blur``,
  ``add_noise``) for tests, behavioural checks ("a re-lit query keeps its top
  result") and drift drills;
* :func:`augment`, a random composition of them whose ranges grow with one
  ``strength`` knob: ``0`` is the identity, :data:`CATALOG_STRENGTH` makes the
  mild catalog views, ``QUERY_STRENGTH * data.query_difficulty`` the hard
  shopper photos.

Randomness always comes from an explicit ``np.random.Generator``. The demo
derives one generator per image from ``(seed, kind, *ids)`` with
:func:`derive_rng` (alias ``image_rng``), so an image never depends on which batch it was made in.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFilter

CATALOG_STRENGTH = 0.35  # mild: small zoom/rotation/light changes, rare small occlusions
QUERY_STRENGTH = 1.0  # a shopper's photo at data.query_difficulty = 1

Fill = int | tuple[int, int, int] | None


# --------------------------------------------------------------------------- seeding


def derive_rng(seed: int, kind: str, *ids: int) -> np.random.Generator:
    """Generator for one random stream, derived from ``(seed, kind, *ids)`` via ``SeedSequence``.

    ``kind`` names the stream (``"catalog"``, ``"query"``, ``"users"``, ...) so
    that streams never collide; the ids locate the image (item id and view
    index, query id). Nothing depends on how many draws another stream made.
    """
    kind_code = zlib.crc32(kind.encode("utf-8"))
    entropy = [int(seed) % 2**64, kind_code, *(int(i) % 2**64 for i in ids)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


image_rng = derive_rng  # the name tests and drift drills use for per-image streams


# --------------------------------------------------------------------------- helpers


def _check(img: np.ndarray) -> None:
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8 image, got {img.dtype}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"expected shape (H, W) or (H, W, 3), got {img.shape}")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def background(img: np.ndarray) -> int | tuple[int, int, int]:
    """Fill value for pixels a geometric transform uncovers: the median border colour.

    Fashion-MNIST articles sit on black (0); product photos usually on white.
    """
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (2H+2W[, 3])
    mid = len(border) // 2
    med = np.partition(border, mid, axis=0)[mid]  # the upper median: cheap, and an actual pixel value
    return int(med) if img.ndim == 2 else tuple(int(v) for v in med)


def affine(
    img: np.ndarray,
    *,
    zoom: float = 1.0,
    aspect: float = 1.0,
    rotation: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
    fill: Fill = None,
) -> np.ndarray:
    """One bilinear resampling of flip -> zoom/aspect -> rotation -> shift, about the centre.

    ``zoom`` > 1 enlarges the content (a crop), < 1 shrinks it (uncovered
    pixels get ``fill``, default :func:`background`); ``aspect`` stretches
    x by sqrt(aspect) and y by 1/sqrt(aspect); ``rotation`` in degrees,
    counter-clockwise; ``shift`` (dx, dy) in pixels.
    """
    _check(img)
    if zoom <= 0 or aspect <= 0:
        raise ValueError(f"zoom and aspect must be > 0, got zoom={zoom}, aspect={aspect}")
    if zoom == 1.0 and aspect == 1.0 and rotation == 0.0 and shift == (0.0, 0.0) and not flip:
        return img.copy()
    h, w = img.shape[:2]
    cx, cy = w / 2.0, h / 2.0
    # forward map (input -> output): p_out = C + T + R S F (p_in - C); PIL wants the inverse.
    sx, sy = zoom * math.sqrt(aspect), zoom / math.sqrt(aspect)
    theta = math.radians(rotation)
    cos, sin = round(math.cos(theta), 12), round(math.sin(theta), 12)  # exact at multiples of 90 degrees
    # M = F^-1 S^-1 R^-1 in plain floats (2x2 numpy costs more than the resampling here);
    # R^-1 = [[cos, -sin], [sin, cos]]: image y points down, so counter-clockwise on screen.
    fx = -1.0 if flip else 1.0
    m00, m01 = fx * cos / sx, -fx * sin / sx
    m10, m11 = sin / sy, cos / sy
    px, py = cx + float(shift[0]), cy + float(shift[1])  # C + T
    coeffs = (m00, m01, cx - (m00 * px + m01 * py), m10, m11, cy - (m10 * px + m11 * py))
    fill = background(img) if fill is None else fill
    out = Image.fromarray(img).transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=fill)
    return np.asarray(out, dtype=np.uint8).copy()


# --------------------------------------------------------------------------- named transforms


def crop(img: np.ndarray, frac: float, center: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Keep a square window of ``frac`` x the side around ``center`` (relative x, y) and resize it back."""
    if not 0 < frac <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {frac}")
    h, w = img.shape[:2]
    # move the window centre to the image centre, then zoom in
    shift = ((0.5 - center[0]) * w / frac, (0.5 - center[1]) * h / frac)
    return affine(img, zoom=1.0 / frac, shift=shift)


def scale(img: np.ndarray, factor: float, fill: Fill = None) -> np.ndarray:
    """Zoom about the centre: ``factor`` > 1 enlarges the article, < 1 shrinks it onto the background."""
    return affine(img, zoom=factor, fill=fill)


def rotate(img: np.ndarray, degrees: float, fill: Fill = None) -> np.ndarray:
    """Rotate counter-clockwise about the centre."""
    return affine(img, rotation=degrees, fill=fill)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    _check(img)
    return img[:, ::-1].copy()


def relight(img: np.ndarray, factor: float) -> np.ndarray:
    """Brightness: multiply every pixel by ``factor`` (clipped to 0..255)."""
    _check(img)
    if factor < 0:
        raise ValueError(f"relight factor must be >= 0, got {factor}")
    return _to_uint8(img.astype(np.float32) * factor)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Stretch (``factor`` > 1) or flatten (< 1) pixel values about the image mean."""
    _check(img)
    x = img.astype(np.float32)
    mean = x.mean()
    return _to_uint8(mean + (x - mean) * factor)


def occlude(img: np.ndarray, box: tuple[int, int, int, int], value: int | tuple[int, int, int] = 0) -> np.ndarray:
    """Paint the rectangle ``box = (top, left, height, width)`` with ``value`` (a finger, a tag, a bag strap)."""
    _check(img)
    top, left, height, width = (int(v) for v in box)
    out = img.copy()
    out[max(top, 0) : max(top + height, 0), max(left, 0) : max(left + width, 0)] = value
    return out


def blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur (out of focus, camera shake); radius in pixels, 0 is the identity."""
    _check(img)
    if radius <= 0:
        return img.copy()
    out = Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=float(radius)))
    return np.asarray(out, dtype=np.uint8).copy()


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive gaussian sensor noise with standard deviation ``sigma`` (pixel units)."""
    _check(img)
    if sigma <= 0:
        return img.copy()
    return _to_uint8(img.astype(np.float32) + rng.normal(0.0, sigma, size=img.shape).astype(np.float32))


# --------------------------------------------------------------------------- random composition


def augment(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A random photo of the same article; ranges grow linearly with ``strength`` (0: identity).

    At ``strength = s``: zoom ``exp(U(-0.15s, 0.35s))`` (mostly a random
    resized crop), aspect ``exp(U(-0.1s, 0.1s))``, rotation ``U(-15s, 15s)``
    degrees, shift up to ``8s`` % of the side, flip with ``p = min(0.5, 0.5s)``,
    blur with ``p = min(0.5, 0.3s)``, contrast and brightness ``exp(U(-0.3s, 0.3s))``,
    an occluding rectangle of side ``U(0.1, 0.1 + 0.25s)`` with
    ``p = min(0.9, 0.6s^2)`` (rare on mild catalog views) and gaussian noise
    of sigma ``U(0, 10s)``. The draws happen in a fixed order, so a generator
    in a given state always gives the same image.
    """
    _check(img)
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return img.copy()
    s = float(strength)
    h, w = img.shape[:2]
    u = rng.uniform(size=16).tolist()  # every draw up front (fixed order, one call), as Python floats
    zoom = math.exp((-0.15 + 0.50 * u[0]) * s)
    aspect = math.exp((-0.10 + 0.20 * u[1]) * s)
    rotation = (-15.0 + 30.0 * u[2]) * s
    shift = ((-0.08 + 0.16 * u[3]) * s * w, (-0.08 + 0.16 * u[4]) * s * h)
    flip = bool(u[5] < min(0.5, 0.5 * s))
    blur_radius = 0.3 + 0.7 * s * u[7] if u[6] < min(0.5, 0.3 * s) else 0.0
    contrast_factor = math.exp((-0.3 + 0.6 * u[8]) * s)
    light_factor = math.exp((-0.3 + 0.6 * u[9]) * s)
    occlusion = u[10] < min(0.9, 0.6 * s * s)
    noise_sigma = 10.0 * s * u[11]

    out = affine(img, zoom=zoom, aspect=aspect, rotation=rotation, shift=shift, flip=flip)
    if blur_radius > 0:
        out = blur(out, blur_radius)
    x = out.astype(np.float32)
    x = (x.mean() + (x - x.mean()) * contrast_factor) * light_factor
    if occlusion:
        side = 0.1 + 0.25 * min(s, 2.0)
        oh = max(1, round(h * (0.1 + (side - 0.1) * u[12])))
        ow = max(1, round(w * (0.1 + (side - 0.1) * u[13])))
        top, left = int(u[14] * (h - oh + 1)), int(u[15] * (w - ow + 1))
        x[top : top + oh, left : left + ow] = float(rng.uniform(0.0, 255.0))
    if noise_sigma > 0:
        x += rng.normal(0.0, noise_sigma, size=x.shape).astype(np.float32)
    return _to_uint8(x)


def augment_many(
    images: Sequence[np.ndarray] | np.ndarray,
    seed: int,
    kind: str,
    ids: Iterable[Sequence[int] | int],
    strength: float,
) -> list[np.ndarray]:
    """Augment each image with its own generator ``image_rng(seed, kind, *id)``; order-independent."""
    out = []
    for img, key in zip(images, ids, strict=True):
        key = (key,) if isinstance(key, (int, np.integer)) else tuple(key)
        out.append(augment(img, image_rng(seed, kind, *key), strength))
    return out
