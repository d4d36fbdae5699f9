"""The visual report renders in a real headless browser: offline, every image shown, the numbers present."""

from __future__ import annotations

import numpy as np
import pytest

from onevision.data.images import encode_png
from onevision.evaluation.visual import Page, Row, headline_table, personalisation_rows, render_page, write_page
from onevision.retrieval import RetrievalResult
from tests.support.browser import open_page

pytestmark = pytest.mark.slow

N_ITEMS = 30
BRAND = {i: f"brand-{i % 3}" for i in range(N_ITEMS)}


def photo(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)


class ByBrand:
    """A fake personalised retriever: shopper u's favourite brand first."""

    name = "onevision"

    def retrieve(self, images, user_ids, k):
        rows = []
        for u in user_ids:
            fav = [i for i in range(N_ITEMS) if BRAND[i] == f"brand-{u % 3}"]
            rows.append((fav + [i for i in range(N_ITEMS) if i not in fav])[:k])
        ids = np.asarray(rows, np.int64)
        return RetrievalResult(ids, np.zeros(ids.shape, np.float32))


def page(tmp_path) -> Page:
    results = {"onevision": {"hr@10": 0.8642, "ndcg@10": 0.7011, "mrr": 0.65, "sim_orders_per_1k": 239.9, "latency_p50_ms": 2.8},
               "mca": {"hr@10": 0.8581, "ndcg@10": 0.6871, "mrr": 0.64, "sim_orders_per_1k": 230.2, "latency_p50_ms": 3.4}}
    header, table = headline_table(results, "sim_orders_per_1k", "simulated orders / 1k")
    rows = [Row(f"query {q}", photo(100 + q), q, {"onevision": list(range(q, q + 10)), "mca": list(range(q + 1, q + 11))}) for q in range(3)]
    images = np.stack([photo(100 + q) for q in range(5)])
    personal, note = personalisation_rows(ByBrand(), images, targets=np.arange(5), favourites={0: "brand-0", 1: "brand-1", 3: "brand-0"}, brand_of=BRAND)
    plot = tmp_path / "curve.png"
    plot.write_bytes(encode_png(np.full((40, 60), 200, np.uint8)))
    return Page(title="OneVision offline evaluation — test", facts={"test queries": 600}, headline=header, table=table, rows=rows,
                personal=personal, personal_note=note, plots=[plot], item_photo=lambda i: encode_png(photo(i)),
                item_label=lambda i: f"cat {i % 4} · {BRAND[i]}", category_of=lambda i: i % 4,
                notes=["DPO kept its input"])


def test_page_is_self_contained(tmp_path):
    text = render_page(page(tmp_path))
    assert "http://" not in text and "https://" not in text  # nothing to fetch: opens offline
    assert text.count("data:image/png;base64,") >= 3 * 2 * 10


def test_personalisation_shows_each_shopper_their_brand(tmp_path):
    rows = page(tmp_path).personal
    assert len(rows) == 2 and rows[0].title != rows[1].title
    for row in rows:
        brand = row.title.split("likes ")[1].rstrip(")")
        ids = next(iter(row.lists.values()))
        assert all(BRAND[int(i)] == brand for i in ids[:5]) and set(row.mark) <= set(map(int, ids))


def test_page_renders_in_headless_chromium(tmp_path):
    path = write_page(page(tmp_path), tmp_path / "evaluate.html")
    seen = open_page(path)
    assert seen.images > 60 and seen.images_rendered == seen.images  # query photos, thumbnails, the plot
    for number in ("0.864", "0.858", "239.9", "230.2", "DPO kept its input", "one photo, two shoppers"):
        assert number in seen.text, number
    (tmp_path / "evaluate.png").write_bytes(seen.screenshot)
    assert seen.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(seen.screenshot) > 10_000


def test_the_reports_say_when_dpo_kept_its_input(tmp_path):
    import json

    from onevision.comparison.stage import dpo_note

    (tmp_path / "metrics").mkdir()
    assert dpo_note(tmp_path) is None  # no DPO stage yet
    (tmp_path / "metrics/dpo.json").write_text(json.dumps({"kept_epoch": 0}))
    assert "DPO kept its input" in dpo_note(tmp_path) and "onevision_sft" in dpo_note(tmp_path)
    (tmp_path / "metrics/dpo.json").write_text(json.dumps({"kept_epoch": 2}))
    assert dpo_note(tmp_path) is None
