"""The one image loader: encoded bytes in a Parquet column or a file path.

Everything that reads an image (encoder training, validation, import,
serving) goes through this module, so the same checks apply everywhere: the
bytes must be PNG or JPEG and decode, and the pixel count is bounded
(decompression bombs: checked on the header, before any pixel is decoded).

* :func:`decode_image` / :func:`load_image`: the pixels as they are, a
  ``uint8`` array of shape ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB).
* :func:`normalize_photo`: any photo as a shopper or a catalog sends it ->
  the model's input, ``image_size`` square with ``image_channels`` channels:
  upright by its EXIF orientation tag, centre-cropped to a square, resized
  (Lanczos). Import stores catalog photos this way and serving normalises
  query photos the same way, so the model sees both alike.

Pixel modes are converted the same way everywhere: transparency (RGBA, LA,
a palette or a colour key with transparency) is flattened on white, 16-bit
grayscale is scaled to 8 bits (not clipped), CMYK, palette and bilevel images
become RGB or grayscale, RGB becomes grayscale (ITU-R 601 luma) for a
grayscale model and grayscale becomes RGB for an RGB one.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own bomb guard warns at ~89 MP; product photos never come near this.
MAX_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG")
# EXIF orientation tag -> the transpose that shows the photo upright (as PIL's ImageOps.exif_transpose).
EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")  # e.g. "<_io.BytesIO object at 0x7f...>"


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


# --------------------------------------------------------------------------- reading


def _undecodable(exc: Exception, data: bytes) -> str:
    """Why the bytes do not decode, without Pillow's object reprs, and what to do."""
    if isinstance(exc, UnidentifiedImageError):
        reason = "no PNG or JPEG signature in its first bytes"
        if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"):
            reason = "it is HEIC/HEIF, as phones save photos"
    else:
        reason = _OBJECT_REPR.sub("", str(exc)).strip() or type(exc).__name__
    return f"image does not decode as PNG or JPEG ({reason}): save or export the photo as PNG or JPEG and use that file"


def _open(data: bytes) -> Image.Image:
    """Check and decode encoded bytes: the format and the pixel bound are checked on the header first."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageError("image is empty or not bytes")
    data = bytes(data)
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(
                f"image of {img.width}x{img.height} exceeds the pixel limit of {MAX_PIXELS}: downscale it (product photos need far fewer pixels)"
            )
        if img.format not in FORMATS:
            raise ImageError(f"unsupported image format {img.format}; use PNG or JPEG")
        img.load()
        return img
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image exceeds the pixel limit (decompression bomb?): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(_undecodable(exc, data)) from exc


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale -> 8-bit 'L', scaled (Pillow's own conversion clips everything above 255 to white)."""
    pixels = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)  # (H, W)
    return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    """An image with an alpha channel or a transparent colour -> 'L' or 'RGB' composited on white."""
    gray = img.mode in ("LA", "La", "L")
    rgba = img.convert("LA" if gray else "RGBA")
    base = Image.new("L" if gray else "RGB", rgba.size, 255 if gray else (255, 255, 255))
    base.paste(rgba.convert(base.mode), mask=rgba.getchannel("A"))  # alpha 255 keeps the pixel exactly
    return base


def _to_mode(img: Image.Image, mode: str | None) -> Image.Image:
    """``img`` as 'L' or 'RGB' (``mode`` None: grayscale stays 'L', anything else becomes 'RGB')."""
    if img.mode in _SIXTEEN_BIT:
        img = _eight_bit(img)  # a 16-bit colour key (tRNS) is rare enough to ignore
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        img = _on_white(img)
    elif img.mode == "1":
        img = img.convert("L")
    if mode is None:
        mode = "L" if img.mode == "L" else "RGB"
    if img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError:  # no direct conversion (e.g. some CMYK/YCbCr pairs): through RGB
        return img.convert("RGB").convert(mode)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block only costs the rotation
        return 1


def decode_image(data: bytes, mode: str | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to a uint8 array as stored; ``mode`` 'L' or 'RGB' converts (see the module doc)."""
    return np.asarray(_to_mode(_open(data), mode), dtype=np.uint8).copy()


def square_photo(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop ``(H, W[, 3])`` pixels to a square and resize it to ``size`` x ``size``."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(pixels[top : top + side, left : left + side]))
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(crop, dtype=np.uint8)


def normalize_photo(data: bytes, image_size: int, image_channels: int) -> np.ndarray:
    """Any PNG/JPEG photo -> the model's input: uint8 (S, S) for 1 channel or (S, S, 3) for 3, S = ``image_size``.

    Upright by its EXIF orientation, ``image_channels`` channels (see the module
    doc for the mode conversions), centre-cropped to a square and resized with
    Lanczos. A photo already S x S in the model's mode comes back unchanged.
    Raises :class:`ImageError` for what :func:`decode_image` refuses.
    """
    if image_channels not in (1, 3):
        raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
    img = _open(data)
    transpose = _UPRIGHT.get(_orientation(img))
    img = _to_mode(img, "L" if image_channels == 1 else "RGB")
    if transpose is not None:
        img = img.transpose(transpose)
    return square_photo(np.asarray(img, dtype=np.uint8), image_size)


# --------------------------------------------------------------------------- paths


def resolve_image_path(image_path: str, image_root: str | Path) -> Path:
    """Resolve a relative image path inside ``image_root``; refuse escapes (``..``, absolute, symlinks out)."""
    root = Path(image_root).resolve()
    if "\x00" in image_path or any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in Path(image_path).parts):
        raise ImageError(f"image path {image_path[:80]!r} is not a usable file name (a NUL character, or a name over 255 bytes)")
    try:
        candidate = (root / image_path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, names the filesystem refuses
        raise ImageError(f"image path {image_path[:80]!r} cannot be resolved: {exc.__class__.__name__}") from None
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
