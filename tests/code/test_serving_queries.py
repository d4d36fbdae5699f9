"""Serving request checks: every bad request gets a clear InvalidQuery, good ones decode exactly."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pandas as pd
import pytest

from onevision.data.images import encode_png
from onevision.serving.queries import InvalidQuery, QuerySpec, decode_query_image, parse_k, parse_queries

SPEC = QuerySpec(image_size=28, image_channels=1, max_image_bytes=10_000, default_k=10, max_k=50)
GRAY = (np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_bytes_and_base64_decode_to_the_same_pixels():
    png = encode_png(GRAY)
    assert np.array_equal(decode_query_image(png, SPEC), GRAY)
    assert np.array_equal(decode_query_image(base64.b64encode(png).decode(), SPEC), GRAY)
    assert np.array_equal(decode_query_image(base64.encodebytes(png).decode(), SPEC), GRAY)  # line-wrapped base64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"definitely not an image", "does not decode"),
        ("@@not base64@@", "not valid base64"),
        (b"", "empty"),
        (None, "missing"),
        (42, "PNG/JPEG bytes or a base64 string"),
        (b"x" * 10_001, "larger than the 10000 byte limit"),
        ("A" * 20_000, "larger than 10000 bytes"),
        (png_header_only(8_000, 8_000), "8000x8000 exceeds the pixel limit"),
        (png_header_only(100_000, 100_000), "decompression bomb"),
        (encode_png(GRAY[:20]), "model expects 28x28 images, got 28x20"),
        (encode_png(np.repeat(GRAY[:, :, None], 3, axis=2)), "expects grayscale (1 channel) images, got RGB"),
    ],
    ids=["not-image", "bad-base64", "empty", "none", "int", "too-many-bytes", "too-long-base64", "too-many-pixels", "bomb", "wrong-size", "rgb"],
)
def test_bad_images_are_refused_with_a_reason(value, message):
    with pytest.raises(InvalidQuery, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_query_image(value, SPEC)


def test_gif_is_refused():
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(GRAY).save(buf, format="GIF")
    with pytest.raises(InvalidQuery, match="unsupported image format GIF"):
        decode_query_image(buf.getvalue(), SPEC)


def test_parse_queries_users_and_row_numbers():
    png = encode_png(GRAY)
    images, users = parse_queries(pd.DataFrame({"image": [png, png], "user_id": [7, -1]}), SPEC)
    assert images.shape == (2, 28, 28) and users.tolist() == [7, -1]
    _, users = parse_queries(pd.DataFrame({"image": [png]}), SPEC)
    assert users.tolist() == [-1]  # no user column: anonymous
    _, users = parse_queries(pd.DataFrame({"image": [png, png], "user_id": [3, None]}), SPEC)
    assert users.tolist() == [3, -1]
    with pytest.raises(InvalidQuery, match="row 1: image does not decode"):
        parse_queries(pd.DataFrame({"image": [png, b"junk"]}), SPEC)
    with pytest.raises(InvalidQuery, match="row 0: user_id must be an integer"):
        parse_queries(pd.DataFrame({"image": [png], "user_id": ["bob"]}), SPEC)
    with pytest.raises(InvalidQuery, match="no 'image' column"):
        parse_queries(pd.DataFrame({"user_id": [1]}), SPEC)
    with pytest.raises(InvalidQuery, match="no rows"):
        parse_queries(pd.DataFrame({"image": []}), SPEC)


def test_k_bounds():
    assert parse_k(None, SPEC) == 10 and parse_k({"k": 3}, SPEC) == 3
    for bad in (0, 51, "many"):
        with pytest.raises(InvalidQuery, match="k must be"):
            parse_k({"k": bad}, SPEC)
