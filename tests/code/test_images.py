"""The one image loader: decode errors are ImageErrors with a reason; photos normalise to the model's input; paths never leave their root."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onevision.data import images
from onevision.data.images import ImageError, decode_image, encode_png, load_image, normalize_photo, resolve_image_path


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
    np.testing.assert_array_equal(decode_image(rgba), RGB)  # anything but grayscale becomes RGB; opaque alpha keeps the pixels


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (None, "empty or not bytes"),
        ("a string", "not bytes"),
        (b"definitely not an image", r"does not decode as PNG or JPEG \(no PNG or JPEG signature"),
        (encode_png(GRAY)[:40], "does not decode as PNG or JPEG"),  # truncated
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", r"\(it is HEIC/HEIF"),
        (encoded(RGB, "GIF"), "unsupported image format GIF"),
        (encoded(RGB, "BMP"), "unsupported image format BMP"),
    ],
)
def test_bad_bytes_raise_image_error_with_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)
    if isinstance(data, bytes) and data:
        with pytest.raises(ImageError, match=reason):
            normalize_photo(data, 28, 1)


@pytest.mark.parametrize("data", [b"definitely not an image", encode_png(GRAY)[:40], b"\xff\xd8\xff\xe0 this is not really a jpeg"])
def test_decode_errors_say_what_to_do_without_object_reprs(data):
    with pytest.raises(ImageError) as err:
        normalize_photo(data, 28, 1)
    message = str(err.value)
    assert "object at 0x" not in message and "BytesIO" not in message and "<" not in message, message
    assert message.startswith("image does not decode as PNG or JPEG (") and "save or export the photo as PNG or JPEG" in message


def test_decompression_bomb_is_refused_before_decoding():
    # 8000 x 8000 = 64 MP: under Pillow's own guard, over ours.
    with pytest.raises(ImageError, match="pixel limit") as err:
        decode_image(png_header_only(8000, 8000))
    assert "8000x8000" in str(err.value) and str(images.MAX_PIXELS) in str(err.value)
    # 50000 x 50000: Pillow refuses it while reading the header; still an ImageError.
    with pytest.raises(ImageError, match="pixel limit"):
        decode_image(png_header_only(50_000, 50_000))
    with pytest.raises(ImageError, match="8000x8000 exceeds the pixel limit"):
        normalize_photo(png_header_only(8000, 8000), 28, 1)  # the header carries almost no data: refused before decoding


def test_pixel_limit_is_the_module_setting(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 63)
    with pytest.raises(ImageError, match="pixel limit") as err:
        decode_image(encode_png(GRAY))
    assert "8x8" in str(err.value) and "63" in str(err.value)
    monkeypatch.setattr(images, "MAX_PIXELS", 64)
    assert decode_image(encode_png(GRAY)).shape == (8, 8)


# --------------------------------------------------------------------------- normalize_photo


def phone_jpeg(orientation: int = 6) -> bytes:
    """A 1200 x 900 JPEG as a phone stores it: sideways pixels plus an EXIF orientation tag.

    Stored 1200 wide x 900 high, left half dark, right half light; orientation 6
    (rotate 90° clockwise to view) makes the upright photo 900 x 1200, dark on top.
    """
    pixels = np.full((900, 1200, 3), 30, np.uint8)
    pixels[:, 600:] = 220
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    return encoded(pixels, "JPEG", quality=85, exif=exif.tobytes())


@pytest.mark.parametrize(("size", "channels", "shape"), [(28, 1, (28, 28)), (64, 3, (64, 64, 3))])
def test_phone_jpeg_becomes_the_model_input_upright(size, channels, shape):
    out = normalize_photo(phone_jpeg(), size, channels)
    assert out.shape == shape and out.dtype == np.uint8
    gray = out if channels == 1 else out.mean(axis=2)
    assert gray[: size // 4].mean() < 60 and gray[-size // 4 :].mean() > 190  # rotated by the EXIF tag: dark on top
    unrotated = normalize_photo(phone_jpeg(orientation=1), size, channels)
    gray = unrotated if channels == 1 else unrotated.mean(axis=2)
    assert gray[:, : size // 4].mean() < 60 and gray[:, -size // 4 :].mean() > 190  # no tag: dark on the left


def test_transparency_is_flattened_on_white():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[:, 30:, 3] = 255  # left half fully transparent (its hidden colour must not show), right half opaque red
    out = normalize_photo(encoded(rgba, "PNG"), 20, 3)
    assert out.shape == (20, 20, 3)
    np.testing.assert_array_equal(out[:, :5], 255)  # white where transparent
    np.testing.assert_array_equal(out[:, -5:], np.broadcast_to(np.array([200, 0, 0], np.uint8), (20, 5, 3)))
    assert normalize_photo(encoded(rgba, "PNG"), 20, 1).shape == (20, 20)
    la = Image.fromarray(np.dstack([GRAY, np.where(GRAY < 32, 0, 255).astype(np.uint8)]), mode="LA")
    buf = io.BytesIO()
    la.save(buf, format="PNG")
    out = normalize_photo(buf.getvalue(), 8, 1)
    assert (out[:4] == 255).all() and (out[4:] == GRAY[4:]).all()
    buf = io.BytesIO()
    Image.fromarray(RGB).convert("P").save(buf, format="PNG", transparency=0)
    assert normalize_photo(buf.getvalue(), 8, 3).shape == (8, 8, 3)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 50 * 70).astype(np.uint16).reshape(50, 70)
    png16 = encoded(ramp, "PNG")
    assert Image.open(io.BytesIO(png16)).mode.startswith("I;16")
    out = normalize_photo(png16, 32, 1)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert out.min() < 20 and out.max() > 235 and 100 < out.mean() < 155  # the whole range, mid-grey on average
    assert normalize_photo(png16, 32, 3).shape == (32, 32, 3)
    np.testing.assert_array_equal(decode_image(encoded(np.full((4, 4), 65535, np.uint16), "PNG")), np.full((4, 4), 255))


@pytest.mark.parametrize("mode", ["CMYK", "1", "P", "L", "RGB"])
def test_every_mode_reaches_the_model_channels(mode):
    img = Image.fromarray(RGB).resize((30, 20)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    data = buf.getvalue()
    assert normalize_photo(data, 16, 1).shape == (16, 16)
    assert normalize_photo(data, 16, 3).shape == (16, 16, 3)


def test_a_photo_of_the_model_shape_passes_unchanged():
    np.testing.assert_array_equal(normalize_photo(encode_png(GRAY), 8, 1), GRAY)
    np.testing.assert_array_equal(normalize_photo(encode_png(RGB), 8, 3), RGB)
    np.testing.assert_array_equal(normalize_photo(encode_png(GRAY), 8, 3), np.repeat(GRAY[:, :, None], 3, axis=2))


def test_centre_crop_keeps_the_middle():
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 255  # only the middle third is white
    np.testing.assert_array_equal(normalize_photo(encode_png(wide), 10, 1), np.full((10, 10), 255))


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
