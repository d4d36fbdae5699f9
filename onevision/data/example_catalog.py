"""A small example of "your own catalog": colour product photos, a catalog CSV and a search log.

``onevision data example-catalog --out my-data`` writes what a shop team would
bring, in the format ``onevision data import`` reads (docs/own-catalog.md):

* ``photos/items/<id>_<view>.jpg``: 3 views per product, 240 x 180 JPEG (not
  square: import centre-crops), a Fashion-MNIST garment of the product's
  category coloured in its brand's colour on a studio background;
* ``photos/queries/<id>.jpg``: shoppers' photos, 640 x 480 JPEG, off-centre,
  scaled, lit differently; some are stored sideways with an EXIF orientation
  tag, as phones do;
* ``catalog.csv``: ``item_id, image_paths, category, category_name, brand, price``;
* ``queries.csv``: ``query_id, user_id, item_id, ts, image_path, shown,
  clicked, ordered``: 10 results shown per query by the shop's current search,
  clicks and orders of shoppers who each favour one brand (a click on an item
  that was not shown, or an order without a click, never happens).

Everything is drawn from one seed, so the same arguments give the same bytes.
The garments come from Fashion-MNIST (``data.fashion_mnist_dir``; Debian's
``dataset-fashion-mnist``), so no photo needs a download.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from onevision.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

# Brand colours (RGB): a shopper's favourite brand is visible in the photo, as a real label's style is.
BRAND_COLOURS = np.array(
    [[200, 40, 40], [40, 110, 200], [40, 160, 70], [230, 170, 30], [140, 60, 170], [30, 30, 30], [240, 120, 160], [120, 80, 40]],
    np.float32,
)
VIEW_SIZE = (240, 180)  # width, height of a catalog photo
QUERY_SIZE = (640, 480)
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ExampleSpec:
    n_items: int = 64
    n_categories: int = 8
    n_brands: int = 8
    views_per_item: int = 3
    n_users: int = 20
    n_queries: int = 480
    days: int = 12
    shown: int = 10
    seed: int = 0


def _render(garment: np.ndarray, colour: np.ndarray, *, size: tuple[int, int], rng: np.random.Generator, scale: float,
            shift: float, light: float, background: np.ndarray) -> Image.Image:
    """A garment (28x28 gray) coloured and placed on a background of ``size`` (w, h)."""
    width, height = size
    side = int(min(width, height) * scale)
    mask = np.asarray(Image.fromarray(garment).resize((side, side), Image.Resampling.LANCZOS), np.float32) / 255.0
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = background[None, None, :] * (0.9 + 0.1 * (y / height))[..., None]  # studio light falls off
    cx = int((width - side) / 2 + rng.uniform(-shift, shift) * width)
    cy = int((height - side) / 2 + rng.uniform(-shift, shift) * height)
    cx, cy = int(np.clip(cx, 0, width - side)), int(np.clip(cy, 0, height - side))
    shade = colour[None, None, :] * (0.55 + 0.45 * mask[..., None])  # the garment's folds stay visible
    alpha = np.clip(mask * 1.6, 0, 1)[..., None]
    patch = canvas[cy : cy + side, cx : cx + side]
    canvas[cy : cy + side, cx : cx + side] = patch * (1 - alpha) + shade * alpha
    canvas = canvas * light + rng.normal(0, 3.0, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, path: Path, orientation: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    img.save(buf, format="JPEG", quality=88, exif=exif.tobytes())
    path.write_bytes(buf.getvalue())


def write_example_catalog(out: str | Path, fashion_mnist_dir: str | Path, spec: ExampleSpec = ExampleSpec()) -> dict[str, int]:
    """Write photos, ``catalog.csv`` and ``queries.csv`` under ``out``; returns the counts written."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    images, labels = load_fashion_mnist(fashion_mnist_dir)
    categories = np.arange(spec.n_items) % spec.n_categories
    brands = rng.integers(0, spec.n_brands, spec.n_items)
    garments = np.stack([images[rng.choice(np.flatnonzero(labels == c))] for c in categories])
    colours = np.clip(BRAND_COLOURS[brands % len(BRAND_COLOURS)] + rng.normal(0, 12, (spec.n_items, 3)), 0, 255)
    prices = np.round(np.exp(rng.normal(3.4, 0.5, spec.n_items)), 2)

    rows = []
    for item in range(spec.n_items):
        paths = []
        for view in range(spec.views_per_item):
            bg = rng.uniform(215, 250, 3).astype(np.float32)
            img = _render(garments[item], colours[item], size=VIEW_SIZE, rng=rng, scale=rng.uniform(0.75, 0.9), shift=0.05,
                          light=rng.uniform(0.95, 1.05), background=bg)
            rel = f"items/{item:04d}_{view}.jpg"
            _jpeg(img, out / "photos" / rel)
            paths.append(rel)
        rows.append({"item_id": item, "image_paths": ";".join(paths), "category": int(categories[item]),
                     "category_name": CLASS_NAMES[int(categories[item])], "brand": f"brand-{int(brands[item])}",
                     "price": f"{prices[item]:.2f}"})
    _write_csv(out / "catalog.csv", rows)

    favourite = rng.integers(0, spec.n_brands, spec.n_users)
    start = np.datetime64("2026-11-01T08:00:00")
    times = np.sort(rng.uniform(0, spec.days * 86400, spec.n_queries)).astype(np.int64)
    queries = []
    for q in range(spec.n_queries):
        user = int(rng.integers(0, spec.n_users))
        fans = np.flatnonzero(brands == favourite[user])
        target = int(rng.choice(fans)) if len(fans) and rng.random() < 0.6 else int(rng.integers(0, spec.n_items))
        bg = rng.uniform(120, 240, 3).astype(np.float32)  # a shopper's room, not a studio
        img = _render(garments[target], colours[target], size=QUERY_SIZE, rng=rng, scale=rng.uniform(0.45, 0.8), shift=0.15,
                      light=rng.uniform(0.75, 1.2), background=bg)
        orientation = 1
        if rng.random() < 0.15:  # stored sideways, upright by its EXIF tag (orientation 6: rotate 90 deg clockwise to view)
            img, orientation = img.transpose(Image.Transpose.ROTATE_90), 6
        rel = f"queries/{q:05d}.jpg"
        _jpeg(img, out / "photos" / rel, orientation)
        shown = _shown_list(target, categories, rng, spec.shown)
        clicked, ordered = [], []
        for pos, item in enumerate(shown):
            fan = brands[item] == favourite[user]
            p_click = (0.65 if item == target else 0.12 + 0.25 * fan) / (1 + 0.15 * pos)
            if rng.random() < p_click:
                clicked.append(item)
                if rng.random() < (0.5 if (item == target or fan) else 0.15):
                    ordered.append(item)
        ts = (start + np.timedelta64(int(times[q]), "s")).astype(str) + "Z"
        queries.append({"query_id": q, "user_id": user, "item_id": target, "ts": ts, "image_path": rel,
                        "shown": ";".join(map(str, shown)), "clicked": ";".join(map(str, clicked)),
                        "ordered": ";".join(map(str, ordered))})
    _write_csv(out / "queries.csv", queries)
    return {"items": spec.n_items, "views": spec.n_items * spec.views_per_item, "users": spec.n_users, "queries": spec.n_queries}


def _shown_list(target: int, categories: np.ndarray, rng: np.random.Generator, n: int) -> list[int]:
    """The shop's current search: mostly the photographed category, the product itself usually near the top."""
    same = [i for i in np.flatnonzero(categories == categories[target]) if i != target]
    other = [i for i in range(len(categories)) if categories[i] != categories[target]]
    picks = list(rng.permutation(same))[: n - 3] + list(rng.choice(other, size=min(len(other), 3), replace=False))
    picks = [int(i) for i in picks][: n - 1]
    if rng.random() < 0.85:  # the current search finds the product most of the time
        picks.insert(int(rng.integers(0, min(4, len(picks) + 1))), target)
    return picks[:n]


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
