"""Property-based tests of the request boundary: whatever bytes or values arrive, the answer is a model
input of the right shape or an InvalidQuery whose message names the problem, never a crash or a repr."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from onevision.serving.queries import InvalidQuery, QuerySpec, parse_k, parse_queries, user_ids_of
from tests.support.defaults import write_defaults
from tests.support.drill import count

SPEC = QuerySpec(image_size=28, image_channels=1, max_image_bytes=200_000)
# Examples per property: 300 here and in CI; the full drill (benchmarks/drill.py --full) asks for more.
EXAMPLES = int(os.environ.get("ONEVISION_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def clean(message: str) -> bool:
    return "Traceback" not in message and " object at 0x" not in message and len(message) < 600


def encoded(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "P": 1, "1": 1, "I;16": 1}[mode]
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, shape, dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode) if mode not in ("L", "RGB", "RGBA", "LA") else Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_cleanly(data):
    count("fuzz.serving")
    try:
        images, _ = parse_queries(pd.DataFrame({"image": [data]}), SPEC)
    except InvalidQuery as exc:
        assert str(exc).startswith("row 0: ") and clean(str(exc)), str(exc)
    else:  # random bytes that happen to decode must still come out as the model's input
        assert images.shape == (1, 28, 28) and images.dtype == np.uint8


@FUZZ
@given(st.sampled_from(["L", "LA", "RGB", "RGBA", "CMYK", "P", "1", "I;16"]),
       st.tuples(st.integers(1, 300), st.integers(1, 300)), st.sampled_from(["PNG", "JPEG"]), st.integers(0, 10_000))
def test_any_decodable_photo_becomes_the_models_input(mode, size, fmt, seed):
    count("fuzz.serving")
    if fmt == "JPEG" and mode in ("LA", "RGBA", "P", "I;16"):
        fmt = "PNG"  # JPEG cannot hold these modes
    if mode == "CMYK":
        fmt = "JPEG"  # nor PNG this one
    data = encoded(mode, size, fmt, seed)
    for spec in (QuerySpec(image_size=28, image_channels=1), QuerySpec(image_size=64, image_channels=3)):  # default byte limit
        images, users = parse_queries(pd.DataFrame({"image": [data], "user_id": [7]}), spec)
        expected = (1, spec.image_size, spec.image_size) + ((3,) if spec.image_channels == 3 else ())
        assert images.shape == expected and images.dtype == np.uint8 and users.tolist() == [7]


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                 st.booleans(), st.binary(max_size=10)))
def test_user_ids_are_integers_or_a_clear_refusal(value):
    count("fuzz.serving")
    try:
        out = user_ids_of([value], 1)
    except InvalidQuery as exc:
        assert "user_id must be an integer" in str(exc) and clean(str(exc))
    else:
        assert out.dtype == np.int64 and out.shape == (1,)


@FUZZ
@given(st.one_of(st.none(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)))
def test_k_is_bounded_or_refused(value):
    count("fuzz.serving")
    try:
        k = parse_k({"k": value}, SPEC)
    except InvalidQuery as exc:
        assert clean(str(exc)) and "k" in str(exc)
    else:
        assert 1 <= k <= SPEC.max_k


def test_a_decompression_bomb_is_refused_before_decoding():
    count("fuzz.serving")
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, format="PNG")  # 48 MP of zeros: a few KB encoded
    with pytest.raises(InvalidQuery, match="pixel limit"):
        parse_queries(pd.DataFrame({"image": [buf.getvalue()]}), SPEC)


# --------------------------------------------------------------------------- the catalog import

CELL = st.one_of(
    st.text(max_size=12), st.integers(-10**12, 10**12).map(str), st.sampled_from(["", "nan", "inf", "-inf", "1e309", "NaN", " 7 ", "7.0", "０", "…"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


CATALOG_FUZZ = settings(max_examples=max(60, EXAMPLES // 5), deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@CATALOG_FUZZ
@given(st.lists(st.tuples(CELL, CELL, CELL, CELL), min_size=1, max_size=6), st.booleans(), st.booleans())
def test_any_catalog_csv_imports_to_validation_or_a_named_error(tmp_path_factory, rows, bom, crlf):
    """item_id, category, brand, price of every kind: the import never crashes, never touches the CSV,
    and what it lets through is judged by validation (quarantine with a rule), not by a traceback."""
    count("fuzz.catalog")
    import hashlib

    from onevision.data.images import encode_png
    from onevision.data.importer import CatalogImportError, import_catalog
    from onevision.data.quarantine import RULES
    from onevision.data.validation import validate_tables

    root = tmp_path_factory.mktemp("fuzz")
    (root / "photos").mkdir()
    (root / "photos" / "a.png").write_bytes(encode_png(np.full((20, 30), 90, np.uint8)))
    newline = "\r\n" if crlf else "\n"
    lines = ["item_id,image_paths,category,brand,price"]
    for item, category, brand, price in rows:
        lines.append(",".join('"' + v.replace('"', '""') + '"' for v in (item, "a.png", category, brand, price)))
    raw = (("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8")
    csv = root / "catalog.csv"
    csv.write_bytes(raw)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        tables = import_catalog(csv, root / "photos", image_size=16, image_channels=1)
    except CatalogImportError as exc:
        assert str(csv) in str(exc) and clean(str(exc)), str(exc)
    else:
        result = validate_tables(tables, image_root=root / "photos", image_size=16, image_channels=1, max_bad_fraction=1.0, progress=False)
        assert {r.split(":")[0] for r in result.quarantine["rule"]} <= set(RULES)  # documented rules ("parent_quarantined:items")
        assert all(clean(str(m)) for m in result.quarantine["message"])
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == digest  # raw data never modified


PATH_CELL = st.one_of(
    st.sampled_from(["a.png", "../a.png", "/etc/passwd", "photos/../../x.png", "./a.png", "a.png;b.png", "a.png|b.png", "",
                     " a.png ", "nope.png", "dir/", ".", "..", "a.png\x00.jpg", "~/a.png", "C:\\a.png", "é.png", "a" * 300]),
    st.text(max_size=20),
)
PHOTO = st.one_of(
    st.binary(max_size=300),  # corrupt bytes
    st.builds(lambda mode, w, h, seed: encoded(mode, (w, h), "PNG", seed), st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "1", "I;16"]),
              st.integers(1, 64), st.integers(1, 64), st.integers(0, 100)),
    st.builds(lambda mode, seed, cut: encoded(mode, (32, 32), "PNG", seed)[:cut], st.sampled_from(["L", "RGB"]), st.integers(0, 9), st.integers(1, 200)),
)


@CATALOG_FUZZ
@given(st.lists(PATH_CELL, min_size=1, max_size=4), PHOTO, PHOTO)
def test_any_photo_path_or_photo_file_imports_or_names_the_row(tmp_path_factory, cells, photo_a, photo_b):
    """Image paths (traversal, absolute, empty, separators, NUL, unicode) and photo files (corrupt, truncated, every
    mode): a named error, or tables whose bad rows validation quarantines; the photos and the CSV stay as they were."""
    import hashlib

    from onevision.data.importer import CatalogImportError, import_catalog
    from onevision.data.quarantine import RULES
    from onevision.data.validation import validate_tables

    count("fuzz.catalog_photos")
    root = tmp_path_factory.mktemp("photos")
    photos = root / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(photo_a)
    (photos / "é.png").write_bytes(photo_b)
    (root / "x.png").write_bytes(encoded("L", (8, 8), "PNG", 0))  # outside the photo folder: never to be read
    lines = ["item_id,image_paths,category,brand,price"]
    lines += [f'{i},"{c.replace(chr(34), chr(34) * 2)}",shoes,acme,9.5' for i, c in enumerate(cells)]
    csv = root / "catalog.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")

    def digest() -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()

    before = digest()
    try:
        tables = import_catalog(csv, photos, image_size=16, image_channels=1)
    except CatalogImportError as exc:
        assert str(csv) in str(exc) and clean(str(exc)), str(exc)
    else:
        assert not set(tables["views"]["image_path"].dropna()) & {"../x.png", str(root / "x.png")}
        result = validate_tables(tables, image_root=photos, image_size=16, image_channels=1, max_bad_fraction=1.0, progress=False)
        assert {r.split(":")[0] for r in result.quarantine["rule"]} <= set(RULES)
        assert all(clean(str(m)) for m in result.quarantine["message"])
    assert digest() == before  # raw data never modified


CLI_ARG = st.one_of(st.text(max_size=30), st.sampled_from(["", "-", "--", "=", "a=b", "data.n_items=-1", "data.n_items=1e309",
                                                          "vrq.codebook_sizes=[0]", "nope.key=1", "data=1", "../../etc", "\x00"]))


@settings(max_examples=max(40, EXAMPLES // 5), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["retrain --set", "retrain --profile", "retrain --until", "search --image", "search --k", "config show --set",
                        "data validate --tables", "drift --current", "approve", "rollback --reason"]), CLI_ARG)
def test_any_command_line_argument_is_run_or_refused_clearly(tmp_path_factory, command, value):
    """Random values for the options users type most: exit 0, or a usage/config error that names the problem;
    never a traceback, and nothing written into the project."""

    from typer.testing import CliRunner

    from onevision.app.cli import app

    count("fuzz.cli")
    project = tmp_path_factory.mktemp("cli")
    write_defaults(project)
    before = sorted(p.name for p in project.iterdir())
    params = (project / "params.yaml").read_bytes()
    argv = command.split() + [value]
    if command.startswith("retrain"):
        argv += ["--until", "nothing-such"] if "--until" not in command else []  # stop before any training
    if command == "approve":
        argv += ["--reason", "x"]
    result = CliRunner().invoke(app, [*argv, "--root", str(project)], env={"ONEVISION_REVIEWER": "nobody"})
    out = result.output
    assert result.exit_code in (0, 1, 2, 3, 4), (argv, result.exit_code, out[-500:])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
    assert "Traceback" not in out and " object at 0x" not in out, out[-800:]
    assert (project / "params.yaml").read_bytes() == params  # a refused run leaves params.yaml as it was
    assert {p for p in (sorted(p.name for p in project.iterdir())) if p not in before} <= {"mlflow.db", ".onevision"}
