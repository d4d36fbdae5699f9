"""The drift page on-call opens: the verdict first, the checks by score, what to do, then Evidently's details.

``report.html`` of a drift run is Evidently's report with this summary inserted at the top of its body: a
banner (drift / no drift / insufficient data), one row per check sorted by how far its score is past its
threshold (score / threshold), the drifted columns of each check by score, and for every alarm what it
means and the first thing to do (the long form is docs/oncall.md). Evidently's own blocks follow, ordered
so that the few scalar checks (photo statistics, category, brand, price, region, SIDs) come before the
embedding's principal components.
"""

from __future__ import annotations

import html
import re
from typing import Any

# First action per alarm (docs/oncall.md "What each alarm means, and what to do" has the long form).
ACTIONS = {
    "data_quality": "Not a model problem: page the owner of the ingestion or client that sends broken queries; do not retrain on this window.",
    "image_stats": "Usually a client change (app release, camera pipeline, compression): confirm with the client team; retrain if it stays.",
    "image_embedding": "The photos look different to the encoder: if image_stats is quiet it is content (new products), so evaluate on fresh data and retrain from align_encoder.",
    "category": "Often seasonal and benign: check per-category quality of the last evaluation; retrain when a growing category was thin in training.",
    "brand": "New brands need semantic IDs: retrain from vrq; until then they are only reachable through MCA.",
    "price": "Personalisation is price-sensitive: retrain when the shift persists.",
    "region": "The user base changed: retrain SFT/DPO when it persists; check cold-start quality.",
    "generated_sid": "Inputs quiet and a promotion just happened? Roll back: onevision rollback --reason \"drift run RUN: generated_sid\". Inputs moved too: act on that alarm.",
}
COLOURS = {"drift": ("#b71c1c", "#fdecea"), "ok": ("#1b5e20", "#e8f5e9"), "insufficient_data": ("#8d6e00", "#fff8e1")}
CSS = """
#onevision-verdict{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;padding:16px 20px;border-radius:6px;border:2px solid}
#onevision-verdict h1{margin:0 0 6px;font-size:24px} #onevision-verdict p{margin:4px 0;font-size:14px}
#onevision-verdict table{border-collapse:collapse;margin:10px 0;font-size:13px;background:#fff}
#onevision-verdict td,#onevision-verdict th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
#onevision-verdict td.num{text-align:right} #onevision-verdict tr.drift td{background:#fdecea;font-weight:600}
"""


def _ratio(check: dict[str, Any]) -> float:
    score, threshold = check.get("score"), check.get("threshold")
    if not isinstance(score, (int, float)) or not threshold:
        return -1.0
    return float(score) / float(threshold)


def ordered_checks(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Checks by score / threshold, the worst first (skipped checks last)."""
    return sorted(summary.get("checks", {}).items(), key=lambda kv: (-_ratio(kv[1]), kv[0]))


def drifted_columns(check: dict[str, Any], limit: int = 6) -> list[tuple[str, float]]:
    cols = [(c, v["score"]) for c, v in check.get("columns", {}).items() if v.get("drifted") and v.get("score") is not None]
    return sorted(cols, key=lambda cv: -cv[1])[:limit]


def verdict_block(summary: dict[str, Any]) -> str:
    """The summary as an HTML block (self-contained styles)."""
    status = summary.get("status", "ok")
    fg, bg = COLOURS.get(status, COLOURS["ok"])
    title = {"drift": "DRIFT: " + ", ".join(summary.get("alarms", [])), "ok": "No drift", "insufficient_data": "Insufficient data: no verdict"}.get(status, status)
    cur, ref = summary.get("current", {}), summary.get("reference", {})
    e = html.escape
    parts = [f"<style>{CSS}</style>", f'<div id="onevision-verdict" style="border-color:{fg};background:{bg}">',
             f'<h1 style="color:{fg}">{e(title)}</h1>',
             f"<p>Drift run <b>{e(str(summary.get('run_id', '')))}</b>: current {e(str(cur.get('label', '')))}, {e(str(cur.get('rows', '')))} queries "
             f"({e(str(cur.get('ts_min')))} to {e(str(cur.get('ts_max')))}) vs reference split {e(str(ref.get('split', '')))}, "
             f"{e(str(ref.get('rows') or '-'))} queries.</p>"]
    if status == "insufficient_data":
        parts.append(f"<p>{e(summary.get('message', ''))}</p>")
    else:
        parts.append("<table><tr><th>check</th><th>status</th><th>score</th><th>threshold</th><th>score / threshold</th>"
                     "<th>drifted columns (by score)</th><th>what it means</th></tr>")
        for name, check in ordered_checks(summary):
            cols = ", ".join(f"{c} {s:.3f}" for c, s in drifted_columns(check))
            score = check.get("score")
            ratio = _ratio(check)
            parts.append(
                f'<tr class="{"drift" if check.get("status") == "drift" else ""}"><td>{e(name)}</td><td>{e(str(check.get("status")))}</td>'
                f'<td class="num">{"-" if score is None else f"{score:.3f}"}</td><td class="num">{check.get("threshold", 0):.3f}</td>'
                f'<td class="num">{"-" if ratio < 0 else f"{ratio:.2f}"}</td><td>{e(cols)}</td><td>{e(check.get("meaning", ""))}</td></tr>')
        parts.append("</table>")
        alarms = summary.get("alarms", [])
        if alarms:
            parts.append("<p><b>What to do</b> (docs/oncall.md has the long form):</p><ul>")
            parts += [f"<li><b>{e(a)}</b>: {e(ACTIONS.get(a, 'see docs/oncall.md').replace('RUN', str(summary.get('run_id', ''))))}</li>" for a in alarms]
            parts.append("</ul>")
        else:
            parts.append("<p>Nothing to do: every check is below its threshold. Details per column follow (Evidently).</p>")
    parts.append("</div>")
    return "".join(parts)


def with_verdict_first(evidently_html: str, summary: dict[str, Any]) -> str:
    """Evidently's report with :func:`verdict_block` as the first thing in its body."""
    block = verdict_block(summary)
    match = re.search(r"<body[^>]*>", evidently_html, re.I)
    if match is None:
        return block + evidently_html
    return evidently_html[: match.end()] + block + evidently_html[match.end():]
