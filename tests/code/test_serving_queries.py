"""Serving request checks: photos as users send them reach the model's shape, every bad request gets a clear InvalidQuery."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from onevision.data.images import EXIF_ORIENTATION, decode_image, encode_png
from onevision.data.importer import prepare_photo
from onevision.serving.queries import InvalidQuery, QuerySpec, decode_query_image, parse_k, parse_queries

SPEC = QuerySpec(image_size=28, image_channels=1, max_image_bytes=10_000, default_k=10, max_k=50)
PHOTO_SPEC = QuerySpec(image_size=28, image_channels=1, default_k=10, max_k=50)  # the default 5 MB bound: room for photos
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
    ],
    ids=["not-image", "bad-base64", "empty", "none", "int", "too-many-bytes", "too-long-base64", "too-many-pixels", "bomb"],
)
def test_bad_images_are_refused_with_a_reason(value, message):
    with pytest.raises(InvalidQuery, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_query_image(value, SPEC)


def encoded(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def phone_jpeg() -> bytes:
    """1200 x 900 JPEG with EXIF orientation 6, as a phone sends it: upright it is 900 x 1200, dark on top."""
    pixels = np.full((900, 1200, 3), 30, np.uint8)
    pixels[:, 600:] = 220
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return encoded(pixels, "JPEG", quality=85, exif=exif.tobytes())


def user_photos() -> dict[str, bytes]:
    rgba = np.dstack([np.repeat(GRAY[:, :, None], 3, axis=2), np.where(GRAY > 100, 255, 0).astype(np.uint8)])
    return {
        "phone-jpeg": phone_jpeg(),
        "rgba-png": encoded(np.kron(rgba, np.ones((7, 5, 1), np.uint8)), "PNG"),  # 196 x 140, partly transparent
        "gray16-png": encoded((np.arange(200 * 200, dtype=np.uint32).reshape(200, 200) % 65536).astype(np.uint16), "PNG"),
        "rgb-png-200": encoded(np.zeros((200, 200, 3), np.uint8), "PNG"),
    }


@pytest.mark.parametrize("name", list(user_photos()))
@pytest.mark.parametrize(("size", "channels"), [(28, 1), (64, 3)])
def test_photos_as_users_send_them_reach_the_model_shape(name, size, channels):
    spec = QuerySpec(image_size=size, image_channels=channels)
    photo = user_photos()[name]
    for value in (photo, base64.b64encode(photo).decode(), "data:image/jpeg;base64," + base64.b64encode(photo).decode()):
        pixels = decode_query_image(value, spec)
        assert pixels.shape == ((size, size) if channels == 1 else (size, size, 3)) and pixels.dtype == np.uint8
    images, _ = parse_queries(pd.DataFrame({"image": [photo, encode_png(GRAY)]}), QuerySpec(image_size=28, image_channels=channels))
    assert images.shape[:3] == (2, 28, 28)


def test_phone_jpeg_is_served_upright():
    pixels = decode_query_image(phone_jpeg(), PHOTO_SPEC)
    assert pixels[:7].mean() < 60 and pixels[-7:].mean() > 190


@pytest.mark.parametrize("name", list(user_photos()))
def test_queries_are_normalised_exactly_as_imported_catalog_photos(name):
    photo = user_photos()[name]
    for channels in (1, 3):
        spec = QuerySpec(image_size=28, image_channels=channels)
        np.testing.assert_array_equal(decode_query_image(photo, spec), decode_image(prepare_photo(photo, 28, channels)))


def test_a_non_image_is_refused_with_what_to_do():
    with pytest.raises(InvalidQuery) as err:
        parse_queries(pd.DataFrame({"image": [encode_png(GRAY), b"%PDF-1.7 catalog page"]}), SPEC)
    message = str(err.value)
    assert message.startswith("row 1: image does not decode as PNG or JPEG (")
    assert "save or export the photo as PNG or JPEG" in message and "object at 0x" not in message


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
    with pytest.raises(InvalidQuery, match="row 1: image does not decode as PNG or JPEG"):
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


# --------------------------------------------------------------------------- HTTP 400 through MLflow's scoring server


class StubRetriever:
    """Records the query images; answers item 7 then 3 for every query."""

    def __init__(self):
        self.images = None

    def retrieve(self, images, user_ids, k):
        from onevision.retrieval import RetrievalResult

        self.images = images
        q = len(images)
        return RetrievalResult(item_ids=np.tile(np.array([7, 3], np.int64), (q, 1)), scores=np.tile(np.array([0.9, 0.5], np.float32), (q, 1)))


class Served:
    """What ``mlflow models serve`` calls: an object with ``metadata`` and ``predict(data, params)``."""

    def __init__(self, model):
        self.model, self.metadata = model, type("Metadata", (), {})()

    def predict(self, data, params=None):
        return self.model.predict(None, data, params)


def invoke(served, payload: dict) -> tuple[int, dict]:
    """One POST /invocations body through MLflow's own request handling (no server process)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        result = scoring_server.invocations(json.dumps(payload), "application/json", served, None)
    except MlflowException as exc:
        return exc.get_http_status_code(), json.loads(exc.serialize_as_json())
    return result.status, json.loads(result.response)


@pytest.fixture
def served():
    from onevision.serving.pyfunc import OneVisionModel

    model = OneVisionModel()
    model.spec, model.retriever = PHOTO_SPEC, StubRetriever()
    return Served(model)


def test_rest_serves_a_full_size_phone_jpeg(served):
    from onevision.serving.pyfunc import rest_payload

    status, body = invoke(served, rest_payload([phone_jpeg()], [5], k=2))
    assert status == 200, body
    assert body["predictions"][0]["item_ids"] == [7, 3]
    assert served.model.retriever.images.shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("images", "params", "expected"),
    [
        ([encode_png(GRAY), encoded(GRAY, "GIF")], None, "bad request: row 1: unsupported image format GIF; use PNG or JPEG"),
        ([b"not an image at all"], None, "bad request: row 0: image does not decode as PNG or JPEG (no PNG or JPEG signature in its first bytes): "
                                          "save or export the photo as PNG or JPEG and use that file"),
        ([encode_png(GRAY)], {"k": 1000}, "bad request: k must be between 1 and 50, got 1000"),
    ],
    ids=["gif", "not-image", "k"],
)
def test_rest_errors_are_short_and_never_echo_the_request(served, images, params, expected):
    from onevision.serving.pyfunc import rest_payload

    payload = rest_payload(images, [1] * len(images))
    if params:
        payload["params"] = params
    status, body = invoke(served, payload)
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert body["message"] == expected  # MLflow would prefix "Failed to predict data '<the request table>'"
    encoded_image = payload["dataframe_records"][0]["image"]
    assert encoded_image[:40] not in body["message"] and "Failed to predict" not in body["message"]
