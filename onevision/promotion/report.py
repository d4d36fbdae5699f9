"""The gate report a reviewer reads: markdown (version description + artifact) and a plot.

The plot puts the candidate next to the champion and the baseline (MCA) for
each compared metric, with the bar it had to clear drawn as a line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onevision import atomic, markdown
from onevision.config import GatesConfig
from onevision.evaluation.metrics import ORDERS_LABELS
from onevision.mca import RANKER_CHANGE
from onevision.plots import pyplot
from onevision.promotion.gates import GateInputs, GateReport, candidate_metric, lookup


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compared_metrics(gates: GatesConfig) -> list[tuple[str, str]]:
    """(metric key, label) of the side-by-side table and plot."""
    return [(k, k) for k in gates.quality_metrics] + [(gates.orders_metric, ORDERS_LABELS.get(gates.orders_metric, gates.orders_metric)), (gates.latency_metric, "latency p95 (ms)")]


def report_title(model_name: str, version: str) -> str:
    """The report's first line; it tells which version a local ``reports/gate_report.md`` belongs to."""
    return f"# Gate report: `{model_name}` version {version}"


def markdown_report(model_name: str, version: str, *, report: GateReport, inputs: GateInputs, gates: GatesConfig, plot_name: str | None = None) -> str:
    verdict = "**PASSED**: waiting for a reviewer" if report.passed else f"**FAILED** ({len(report.failed)} of {len(report.results)} gates): cannot be approved"
    lines = [report_title(model_name, version), "", f"Verdict: {verdict}.", ""]
    lines.append(markdown.table([[r.name, "pass" if r.passed else "**FAIL**", _fmt(r.value), _fmt(r.threshold), r.reason] for r in report.results],
                                ["gate", "result", "candidate", "threshold", "why"], align="llrrl"))
    champion = f"champion v{inputs.champion_version}" if inputs.champion_version else "champion (none)"
    compared = [[label, _fmt(candidate_metric(inputs, key)), _fmt(lookup(inputs.champion, key)), _fmt(lookup(inputs.baseline, key))]
                for key, label in compared_metrics(gates)]
    lines += ["", f"## Candidate vs {champion} vs {gates.baseline_system}", "",
              markdown.table(compared, ["metric", f"candidate (`{gates.candidate_system}`)", champion, gates.baseline_system], align="lrrr")]
    if gates.baseline_system.startswith("mca"):
        lines += ["", f"Baseline: {RANKER_CHANGE}."]
    if plot_name:
        lines += ["", f"Plot: `{plot_name}` (attached to this version's run)."]
    lines += ["", "Photos: `gate_report/candidate.html` (attached to this version's run; `reports/candidate.html` in the project): "
              "the evaluation's example queries answered by the candidate, the champion and MCA, side by side; "
              "`gate_report/evaluate.html`: the evaluation's page, with one photo searched by two shoppers of different tastes."]
    lines += ["", "Tolerances are relative: a gate against a reference r passes when candidate >= r x (1 - tolerance).", ""]
    if report.passed:
        lines += ["## Decide", "", "```", f"onevision approve {version} --reason TEXT   # as yourself: $ONEVISION_REVIEWER or your login",
                  f"onevision reject {version} --reason TEXT", "```", ""]
    return "\n".join(lines)


def where_to_read(local_report: Path, model_name: str, version: str, tags: dict[str, str], tracking_uri: str) -> list[str]:
    """Lines saying where a gated version's report is: the local file (when it is this version's) and its MLflow artifact."""
    lines = []
    failed = tags.get("gates.failed")
    if failed:
        lines.append(f"failed gates: {failed.replace(',', ', ')}")
    try:
        is_this_version = local_report.read_text().splitlines()[:1] == [report_title(model_name, version)]
    except (OSError, UnicodeDecodeError):
        is_this_version = False
    if is_this_version:
        lines.append(f"gate report: {local_report}")
    artifact = tags.get("gate_report")
    if artifact:
        lines.append(f"gate report in MLflow: {artifact} (MLFLOW_TRACKING_URI={tracking_uri} mlflow artifacts download -u {artifact})")
    lines.append(f"the report is also the description of version {version} of '{model_name}' in the MLflow UI (Models)")
    return lines


def plot_report(path: Path, inputs: GateInputs, gates: GatesConfig, report: GateReport) -> Path:
    """One panel per compared metric: candidate, champion and baseline bars, the gate's threshold as a line."""
    plt = pyplot()

    thresholds = {r.name: r.threshold for r in report.results}
    metrics = compared_metrics(gates)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    names = ["candidate", f"champion v{inputs.champion_version}" if inputs.champion_version else "champion", gates.baseline_system]
    colors = ["tab:blue", "tab:green", "tab:grey"]
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        values = [candidate_metric(inputs, key), lookup(inputs.champion, key), lookup(inputs.baseline, key)]
        heights = [float(v) if isinstance(v, (int, float)) else 0.0 for v in values]
        bars = ax.bar(range(3), heights, color=colors)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(_fmt(v) if v is not None else "n/a", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        label_key = "orders" if key == gates.orders_metric else key
        lines = [("latency_p95", "budget", "tab:red")] if key == gates.latency_metric else [
            (f"baseline.{label_key}", f"{gates.baseline_system} gate", "tab:red"), (f"champion.{label_key}", "champion gate", "tab:green")]
        drawn = False
        for gate, text, color in lines:
            if thresholds.get(gate) is not None:
                ax.axhline(thresholds[gate], color=color, ls="--", lw=1, label=text)
                drawn = True
        if drawn:
            ax.legend(fontsize=7, loc="lower center")
        ax.set_xticks(range(3), names, rotation=20, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Gate report: " + ("passed" if report.passed else "FAILED"))
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
