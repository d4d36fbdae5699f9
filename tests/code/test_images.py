"""The one image loader: decode errors are ImageErrors with a reason; paths never leave their root."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onevision.data import images
from onevision.data.images import ImageError, decode_image, encode_png, load_image, resolve_image_path


def encoded(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


GRAY = np.arange(64, dtype=np.uint8).reshape(8, 8)
RGB = np.dstack([GRAY, GRAY[::-1], GRAY.T])


def test_png_round_trip_is_exact_and_deterministic():
    assert encode_png(GRAY) == encode_png(GRAY)
    np.testing.assert_array_equal(decode_image(encode_png(GRAY)), GRAY)
    np.testing.assert_array_equal(decode_image(encode_png(RGB)), RGB)


def test_jpeg_decodes_and_modes_convert():
    jpeg = encoded(RGB, "JPEG", quality=95)
    assert decode_image(jpeg).shape == (8, 8, 3)
    assert decode_image(jpeg, mode="L").shape == (8, 8)
    assert decode_image(encode_png(GRAY), mode="RGB").shape == (8, 8, 3)
    rgba = encoded(np.dstack([RGB, np.full((8, 8), 255, np.uint8)]), "PNG")
    assert decode_image(rgba).shape == (8, 8, 3)  # anything but L/RGB becomes RGB


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (None, "empty or not bytes"),
        ("a string", "not bytes"),
        (b"definitely not an image", "does not decode"),
        (encode_png(GRAY)[:40], "does not decode"),  # truncated
        (encoded(RGB, "GIF"), "unsupported image format GIF"),
        (encoded(RGB, "BMP"), "unsupported image format BMP"),
    ],
)
def test_bad_bytes_raise_image_error_with_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    # 8000 x 8000 = 64 MP: under Pillow's own guard, over ours.
    with pytest.raises(ImageError, match="pixel limit") as err:
        decode_image(png_header_only(8000, 8000))
    assert "8000x8000" in str(err.value) and str(images.MAX_PIXELS) in str(err.value)
    # 50000 x 50000: Pillow refuses it while reading the header; still an ImageError.
    with pytest.raises(ImageError, match="pixel limit"):
        decode_image(png_header_only(50_000, 50_000))


def test_pixel_limit_is_the_module_setting(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 63)
    with pytest.raises(ImageError, match="pixel limit") as err:
        decode_image(encode_png(GRAY))
    assert "8x8" in str(err.value) and "63" in str(err.value)
    monkeypatch.setattr(images, "MAX_PIXELS", 64)
    assert decode_image(encode_png(GRAY)).shape == (8, 8)


def test_encode_png_refuses_wrong_arrays():
    with pytest.raises(ImageError, match="uint8"):
        encode_png(GRAY.astype(np.float32))
    with pytest.raises(ImageError, match="shape"):
        encode_png(np.zeros((4, 4, 4), np.uint8))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(encode_png(GRAY))
    (tmp_path / "secret.png").write_bytes(encode_png(RGB))
    (root / "link_out.png").symlink_to(tmp_path / "secret.png")
    (root / "link_in.png").symlink_to(root / "sub" / "a.png")
    return root


def test_paths_resolve_inside_the_root(root):
    assert resolve_image_path("sub/a.png", root) == (root / "sub" / "a.png").resolve()
    assert resolve_image_path("sub/../sub/a.png", root) == (root / "sub" / "a.png").resolve()
    assert resolve_image_path("link_in.png", root) == (root / "sub" / "a.png").resolve()


@pytest.mark.parametrize("path", ["../secret.png", "sub/../../secret.png", "link_out.png", "ABSOLUTE", "ABSOLUTE_INSIDE"])
def test_escapes_are_refused(root, path):
    if path == "ABSOLUTE":
        path = str(root.parent / "secret.png")
    elif path == "ABSOLUTE_INSIDE":
        path = str(root / "sub" / "a.png")  # absolute paths are refused even when they point inside
    with pytest.raises(ImageError, match="points outside"):
        resolve_image_path(path, root)
    with pytest.raises(ImageError, match="points outside"):
        load_image(None, path, root)


def test_load_image_reads_bytes_or_a_confined_file(root):
    np.testing.assert_array_equal(load_image(encode_png(GRAY), None), GRAY)
    np.testing.assert_array_equal(load_image(None, "sub/a.png", root), GRAY)
    assert load_image(None, "sub/a.png", root, mode="RGB").shape == (8, 8, 3)
    with pytest.raises(ImageError, match="not found"):
        load_image(None, "sub/missing.png", root)
    with pytest.raises(ImageError, match="no image root"):
        load_image(None, "sub/a.png", None)
    with pytest.raises(ImageError, match="neither"):
        load_image(None, None, root)
    with pytest.raises(ImageError, match="neither"):
        load_image(float("nan"), "", root)
