"""The promotion candidate's page: the evaluation's example queries answered by the candidate, the current
champion and MCA, side by side (``reports/candidate.html``, attached to the candidate's run with the gate
report). The champion's answers are computed now, by loading its registered model; the candidate's and
MCA's come from the evaluation (``reports/evaluate_examples.json``)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from onevision import paths
from onevision.data.images import decode_image
from onevision.evaluation.visual import Page, Row, catalog_lookups, write_page
from onevision.registry.model_registry import scoped_tracking_uri

log = logging.getLogger(__name__)

SHEET = paths.REPORTS / "candidate.html"
EXAMPLES = paths.REPORTS / "evaluate_examples.json"


def _catalog(root: Path):
    """(thumbnail, label, category) lookups from the validated catalog when the project has one."""
    items = root / paths.VALIDATED / "items.parquet"
    if not items.exists():
        return (lambda i: None), (lambda i: ""), (lambda i: None)

    return catalog_lookups(root, pd.read_parquet(items))


def candidate_sheet(root: Path, model_name: str, *, version: str, champion_version: str | None, tracking_uri: str,
                    candidate_system: str, baseline_system: str, metrics: dict[str, dict[str, Any]]) -> Path | None:
    """Write ``reports/candidate.html``; None when the evaluation left no examples (nothing to show)."""
    root = Path(root)
    path = root / EXAMPLES
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    thumbs = {int(k): base64.b64decode(v) for k, v in doc.get("thumbnails", {}).items() if v}
    photo, label, category = _catalog(root)
    queries = doc["queries"]
    photos = [decode_image(base64.b64decode(q["photo"])) for q in queries]
    notes: list[str] = []
    champion_lists: list[list[int]] | None = None
    if champion_version is not None:
        try:
            champion_lists = champion_answers(model_name, champion_version, tracking_uri, queries)
        except Exception as exc:  # noqa: BLE001 - the page still shows candidate vs MCA, and says why
            notes.append(f"the champion v{champion_version} could not be run on these queries: {exc}")
    else:
        notes.append("no champion yet: the candidate is compared with MCA only")
    rows = []
    for i, q in enumerate(queries):
        lists = {f"candidate v{version}": q["lists"].get("onevision") or next(iter(q["lists"].values()))}
        if champion_lists is not None:
            lists[f"champion v{champion_version}"] = champion_lists[i]
        if "mca" in q["lists"]:
            lists["mca"] = q["lists"]["mca"]
        rows.append(Row(q["title"], photos[i], int(q["target"]), lists))
    cols = [("hr@10", 3), ("ndcg@10", 3), ("sim_orders_per_1k", 1), ("logged_orders_per_1k", 1), ("latency_p95_ms", 2)]
    present = [(k, d) for k, d in cols if any(isinstance(m.get(k), (int, float)) for m in metrics.values())]
    table = [[name, *(f"{m[k]:.{d}f}" if isinstance(m.get(k), (int, float)) else "–" for k, d in present)] for name, m in metrics.items()]
    page = Page(
        title=f"Promotion candidate {model_name} v{version}", facts={"candidate": candidate_system, "baseline": baseline_system,
                                                                     "champion": f"v{champion_version}" if champion_version else "none"},
        headline=["", *(k for k, _ in present)], table=table, rows=rows, personal=[], personal_note="",
        plots=[root / paths.PLOTS / "gate_report.png"],
        item_photo=lambda i: thumbs.get(int(i)) or photo(i), item_label=label, category_of=category, notes=notes,
    )
    return write_page(page, root / SHEET)


def champion_answers(model_name: str, champion_version: str, tracking_uri: str, queries: list[dict], k: int = 10) -> list[list[int]]:
    """The champion's top ``k`` for each example query, from its registered model (as serving loads it)."""

    frame = pd.DataFrame({"image": [base64.b64decode(q["photo"]) for q in queries],
                          "user_id": np.asarray([q.get("user_id", -1) for q in queries], np.int64)})
    with scoped_tracking_uri(tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{champion_version}")
    out = model.predict(frame, params={"k": k})
    return [list(map(int, ids)) for ids in out["item_ids"]]
