"""The visual report: query photos and what each system returns, as one self-contained HTML page.

Reviewers of a vision-search model would rather look than read. ``reports/evaluate.html`` (stage
``evaluate``) and the promotion candidate's page (attached to its MLflow model version) show:

* for a seeded sample of TEST queries, the shopper's photo and each system's top 10 as thumbnails side by
  side (OneVision, MCA and, for a candidate, the current champion), the photographed product marked
  (green) and items of its category marked (grey);
* personalisation: one photo searched by two shoppers of different favourite brands (the simulator's
  tastes in the demo, the most ordered brand of the search log for an imported catalog), their
  favourite-brand items marked;
* the headline table (every system, with the stage ablation) and the evaluation's plots.

Everything is inlined (images as base64 PNG data URIs, CSS in the page), so the file opens offline, from
an e-mail attachment or from the MLflow UI's artifact view. :func:`render_page` takes plain data;
:func:`evaluation_sheet` gathers it from an evaluated project.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onevision import paths
from onevision.data.images import encode_png

TOP = 10
EXAMPLES = 8


@dataclass
class Row:
    """One query shown: its photo and, per system, the ranked item ids."""

    title: str
    photo: np.ndarray  # uint8 (H, W) or (H, W, 3)
    target: int  # the photographed product (-1: unknown)
    lists: dict[str, Sequence[int]]
    mark: dict[int, str] = field(default_factory=dict)  # item id -> CSS class (e.g. "fav")
    user: int = -1  # the shopper (-1: anonymous)


@dataclass
class Page:
    title: str
    facts: dict[str, Any]
    headline: list[str]  # column names
    table: list[list[str]]  # rows of cells
    rows: list[Row]
    personal: list[Row]
    personal_note: str
    plots: list[Path]
    item_photo: Callable[[int], bytes | None]  # item id -> encoded PNG/JPEG bytes of its first view
    item_label: Callable[[int], str]  # item id -> "category · brand"
    category_of: Callable[[int], Any]
    notes: list[str] = field(default_factory=list)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.facts{color:#555;font-size:13px} .facts span{margin-right:16px}
table.num{border-collapse:collapse;font-size:13px} table.num td,table.num th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.num td:first-child,table.num th:first-child{text-align:left}
.query{display:flex;gap:14px;align-items:flex-start;margin:10px 0 18px}
.qphoto{width:112px;text-align:center;font-size:12px;color:#555} .qphoto img{width:104px;height:104px;border:1px solid #999}
.lists{display:flex;flex-direction:column;gap:4px}
.list{display:flex;align-items:center;gap:4px} .sys{width:120px;font-size:12px;font-weight:600}
.item{position:relative;width:60px;text-align:center;font-size:10px;color:#666}
.item img{width:56px;height:56px;border:3px solid transparent;border-radius:3px;image-rendering:auto}
.item.hit img{border-color:#1a9e3a} .item.cat img{border-color:#bbb} .item.fav img{border-color:#d4a017}
.item .rank{position:absolute;top:2px;left:4px;background:#fff;border-radius:2px;padding:0 2px;font-size:10px}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.swatch{display:inline-block;width:12px;height:12px;border:3px solid;margin-right:4px;vertical-align:middle}
.plots img{max-width:100%;border:1px solid #eee;margin:6px 0}
.nophoto{width:56px;height:56px;background:#eee;color:#999;display:flex;align-items:center;justify-content:center;border-radius:3px}
.note{font-size:13px;color:#444;background:#f6f6f6;padding:6px 10px;border-left:3px solid #999}
"""


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _mime(data: bytes) -> str:
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"


def _img(data: bytes | None, alt: str) -> str:
    if not data:  # a grey box, not a broken image
        return f'<div class="nophoto" title="{html.escape(alt)}: no photo in this project">?</div>'
    return f'<img alt="{html.escape(alt)}" src="{data_uri(data, _mime(data))}">'


def _item_cell(page: Page, rank: int, item: int, row: Row) -> str:
    cls = "hit" if item == row.target else row.mark.get(item, "")
    if not cls and row.target >= 0 and page.category_of(item) == page.category_of(row.target):
        cls = "cat"
    label = page.item_label(item)
    return (f'<div class="item {cls}" title="item {item}: {html.escape(label)}"><span class="rank">{rank}</span>'
            f'{_img(page.item_photo(item), f"item {item}")}<div>#{item}</div></div>')


def _query(page: Page, row: Row) -> str:
    lists = "".join(
        f'<div class="list"><div class="sys">{html.escape(name)}</div>'
        + "".join(_item_cell(page, r + 1, int(i), row) for r, i in enumerate(ids[:TOP]) if int(i) >= 0) + "</div>"
        for name, ids in row.lists.items()
    )
    photo = _img(encode_png(np.ascontiguousarray(row.photo)), row.title)
    target = f"product #{row.target}" if row.target >= 0 else ""
    return (f'<div class="query"><div class="qphoto">{photo}<div>{html.escape(row.title)}</div><div>{target}</div></div>'
            f'<div class="lists">{lists}</div></div>')


def render_page(page: Page) -> str:
    """The whole HTML document (self-contained)."""
    facts = "".join(f"<span><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</span>" for k, v in page.facts.items())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in page.headline)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in page.table)
    legend = ('<div class="legend"><span><i class="swatch" style="border-color:#1a9e3a"></i>the photographed product</span>'
              '<span><i class="swatch" style="border-color:#bbb"></i>same category</span>'
              '<span><i class="swatch" style="border-color:#d4a017"></i>the shopper\'s favourite brand</span></div>')
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(page.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(page.title)}</h1><div class='facts'>{facts}</div>",
        *(f"<p class='note'>{html.escape(n)}</p>" for n in page.notes),
        f"<h2>Headline (TEST split)</h2><table class='num' id='headline'><tr>{head}</tr>{body}</table>" if page.table else "",
        f"<h2>What each system returns</h2>{legend}",
        *(_query(page, r) for r in page.rows),
    ]
    if page.personal:
        parts += ["<h2>Personalisation: one photo, two shoppers</h2>", f"<p class='note'>{html.escape(page.personal_note)}</p>", legend]
        parts += [_query(page, r) for r in page.personal]
    if page.plots:
        parts.append("<h2>Curves</h2><div class='plots'>")
        parts += [f"<div>{_img(p.read_bytes(), p.stem)}</div>" for p in page.plots if p.exists()]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_page(page: Page, path: Path) -> Path:
    """Render ``page`` to ``path`` atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_page(page), encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- from an evaluated project


def catalog_lookups(root: Path, items) -> tuple[Callable[[int], bytes | None], Callable[[int], str], Callable[[int], Any]]:
    """(item photo, item label, item category) from the validated tables of ``root``."""
    # lazy: pandas only to read the catalog tables; the page writer itself needs none
    import pandas as pd

    views = pd.read_parquet(root / paths.VALIDATED / "views.parquet", columns=["item_id", "image"])
    first = views.drop_duplicates("item_id").set_index("item_id")["image"].to_dict()
    cat_name = items["category_name"] if "category_name" in items.columns else items["category"]
    label = {int(i): f"{c} · {b}" for i, c, b in zip(items["item_id"], cat_name.astype(str), items["brand"].astype(str), strict=True)}
    category = dict(zip(items["item_id"].astype(int), items["category"], strict=True))
    return (lambda i: first.get(int(i))), (lambda i: label.get(int(i), "")), (lambda i: category.get(int(i)))


def favourite_brands(root: Path, items) -> dict[int, str]:
    """Each shopper's favourite brand: the simulator's first favourite (demo), else the most ordered then
    clicked brand of the search log (an imported catalog)."""
    # lazy: pandas only to read the catalog tables; the page writer itself needs none
    import pandas as pd

    tastes = root / paths.VALIDATED / "user_tastes.parquet"
    if tastes.exists():
        t = pd.read_parquet(tastes, columns=["user_id", "favorite_brands"])
        return {int(u): str(f[0]) for u, f in zip(t["user_id"], t["favorite_brands"], strict=True) if len(f)}
    acts = pd.read_parquet(root / paths.VALIDATED / "interactions.parquet", columns=["query_id", "item_id", "action"])
    queries = pd.read_parquet(root / paths.VALIDATED / "queries.parquet", columns=["query_id", "user_id"])
    acts = acts.merge(queries, on="query_id").merge(items[["item_id", "brand"]], on="item_id")
    acts["weight"] = np.where(acts["action"].astype(str) == "order", 3.0, 1.0)
    best = acts.groupby(["user_id", "brand"])["weight"].sum().reset_index().sort_values(["user_id", "weight"], ascending=[True, False])
    return {int(u): str(b) for u, b in best.drop_duplicates("user_id")[["user_id", "brand"]].itertuples(index=False)}


def personalisation_rows(system, images: np.ndarray, *, targets: np.ndarray, favourites: dict[int, str], brand_of: dict[int, str],
                         candidates: int = 30) -> tuple[list[Row], str]:
    """One TEST photo searched by two shoppers with different favourite brands: the pair (over the first
    ``candidates`` photos and the shoppers of the two most common favourites) whose lists differ most."""
    if len(favourites) < 2 or not len(images):
        return [], ""
    counts: dict[str, list[int]] = {}
    for user, brand in sorted(favourites.items()):
        counts.setdefault(brand, []).append(user)
    brands = sorted(counts, key=lambda b: (-len(counts[b]), b))[:2]
    if len(brands) < 2:
        return [], ""
    users = (counts[brands[0]][0], counts[brands[1]][0])
    n = min(candidates, len(images))
    picks = np.arange(n)
    res = [system.retrieve(images[picks], np.full(n, u, np.int64), TOP).item_ids for u in users]

    def share(ids: np.ndarray, brand: str) -> float:
        return float(np.mean([brand_of.get(int(i)) == brand for i in ids if int(i) >= 0])) if len(ids) else 0.0

    gaps = [share(res[0][q], brands[0]) - share(res[0][q], brands[1]) + share(res[1][q], brands[1]) - share(res[1][q], brands[0]) for q in range(n)]
    q = int(np.argmax(gaps))
    rows = []
    for user, brand, ids in zip(users, brands, (res[0][q], res[1][q]), strict=True):
        mark = {int(i): "fav" for i in ids if brand_of.get(int(i)) == brand}
        rows.append(Row(f"shopper {user} (likes {brand})", images[q], int(targets[q]), {system.name: ids}, mark))
    note = (f"The same photo searched by shopper {users[0]} (favourite brand {brands[0]}) and shopper {users[1]} ({brands[1]}); "
            f"gold: items of that shopper's favourite brand. Shown: the photo, of the first {n} TEST photos, where the two "
            f"lists differ most in favourite-brand share (a showcase, not an average: see the headline table for that).")
    return rows, note


HEADLINE = (("hr@10", "HR@10", 3), ("ndcg@10", "NDCG@10", 3), ("mrr", "MRR", 3))


def headline_table(results: dict[str, dict[str, Any]], orders: str, orders_label: str) -> tuple[list[str], list[list[str]]]:
    cols = [*HEADLINE, (orders, orders_label, 1), ("latency_p50_ms", "p50 ms", 2)]
    header = ["system", *(c[1] for c in cols)]
    rows = [[name, *(f"{m[k]:.{d}f}" if isinstance(m.get(k), (int, float)) else "–" for k, _, d in cols)] for name, m in results.items()]
    return header, rows
