"""Gated promotion on a real MLflow registry (temp SQLite): gates, reviewers, approve/reject, rollback, serving the champion."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from onevision.app.cli import app
from onevision.data.images import encode_png
from onevision.project import Project
from onevision.promotion.workflow import approve, check_gates, register_candidate
from onevision.registry.model_registry import (
    AWAITING,
    CHALLENGER,
    CHAMPION,
    GATES_FAILED,
    PREVIOUS,
    REJECTED,
    ROLLED_BACK,
    PromotionError,
)
from tests.support.projects import build_project
from tests.support.tiny_trained import GOOD_METRICS, item_images, write_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory, isolated_state) -> Path:
    return build_project(tmp_path_factory.mktemp("promotion") / "project", "tiny-trained").root


def registry(project: Path):
    return Project.open(project).registry()


def new_candidate(project: Path, evaluate: dict | None = None):
    """Register the project's model with these metrics and check its gates -> (version, report)."""
    write_metrics(project, evaluate=evaluate)
    opened = Project.open(project)
    version = register_candidate(opened).version
    return version, check_gates(opened, version)


def better(delta: float) -> dict:
    return {"knn": {**GOOD_METRICS["knn"], "hr@10": GOOD_METRICS["knn"]["hr@10"] + delta}, "mca": GOOD_METRICS["mca"]}


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def first_champion(project):
    """Version 1 approved by a reviewer from a second process (`onevision approve` in a subprocess)."""
    version, report = new_candidate(project)
    assert report.passed, [(r.name, r.reason) for r in report.failed]
    reg = registry(project)
    assert reg.status(reg.version(version)) == AWAITING and reg.aliases() == {CHALLENGER: version}
    proc = subprocess.run(
        [str(BIN / "onevision"), "approve", version, "--reviewer", "alice", "--reason", "beats MCA on every gate", "--root", str(project)],
        capture_output=True, text=True, env={**env(), "ONEVISION_REVIEWER": "alice"}, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return version


def test_approve_from_another_process_moves_champion_and_audits(project, first_champion):
    reg = registry(project)
    assert reg.aliases() == {CHAMPION: first_champion}  # challenger cleared, no previous champion yet
    mv = reg.version(first_champion)
    assert reg.status(mv) == "champion" and mv.tags["decided_by"] == "alice"
    assert mv.tags["gate.baseline.hr_at_10.value"] == "0.62" and mv.tags["gates.passed"] == "true"
    assert json.loads(mv.tags["metrics"])["hr@10"] == pytest.approx(0.62)
    record = reg.audit_log()[-1]
    assert record["action"] == "approve" and record["version"] == first_champion and record["by"] == "alice"
    assert record["reason"] == "beats MCA on every gate" and record["at"].endswith("Z")
    assert record["gates"]["baseline.hr_at_10"] == {"value": "0.62", "passed": True}
    result = runner.invoke(app, ["audit", "--root", str(project)])
    assert result.exit_code == 0 and f"approve  v{first_champion}" in result.output and "alice" in result.output


def test_failing_gate_blocks_promotion(project, first_champion):
    version, report = new_candidate(project, evaluate={"knn": {**GOOD_METRICS["knn"], "hr@10": 0.30}, "mca": GOOD_METRICS["mca"]})
    assert not report.passed
    assert {r.name for r in report.failed} == {"baseline.hr@10", "champion.hr@10"}
    reg = registry(project)
    mv = reg.version(version)
    assert reg.status(mv) == GATES_FAILED and mv.tags["gate.baseline.hr_at_10.passed"] == "false"
    assert mv.tags["gate.baseline.hr_at_10.value"] == "0.3" and "FAIL" in mv.description
    assert CHALLENGER not in reg.aliases()
    with pytest.raises(PromotionError, match="not awaiting approval .*gates failed"):
        approve(Project.open(project), version=version, reviewer="alice", reason="ship it anyway")
    result = runner.invoke(app, ["approve", version, "--reviewer", "alice", "--reason", "ship it anyway", "--root", str(project)], env={"ONEVISION_REVIEWER": "alice"})
    assert result.exit_code == 2 and f"gate report: {project.resolve() / 'reports/gate_report.md'}" in result.output
    assert f"gate report in MLflow: runs:/{mv.tags['run_id']}/gate_report/gate_report.md" in result.output
    assert reg.aliases()[CHAMPION] == first_champion
    assert (project / "reports/gate_report.md").exists() and (project / "plots/gate_report.png").exists()
    artifacts = {f.path for f in reg.client.list_artifacts(mv.tags["run_id"], "gate_report")}
    assert {"gate_report/gate_report.md", "gate_report/gate_report.png"} <= artifacts


def test_unknown_reviewer_refused_and_reject_leaves_champion(project, first_champion):
    version, report = new_candidate(project, evaluate=better(0.01))
    assert report.passed
    result = runner.invoke(app, ["approve", version, "--reviewer", "mallory", "--reason", "trust me", "--root", str(project)], env={"ONEVISION_REVIEWER": "mallory"})
    assert result.exit_code == 2 and "'mallory' is not a reviewer" in result.output
    reg = registry(project)
    assert reg.status(reg.version(version)) == AWAITING and reg.aliases()[CHAMPION] == first_champion
    result = runner.invoke(app, ["reject", version, "--reviewer", "bob", "--reason", "orders flat", "--root", str(project)], env={"ONEVISION_REVIEWER": "bob"})
    assert result.exit_code == 0, result.output
    assert reg.status(reg.version(version)) == REJECTED
    assert reg.aliases() == {CHAMPION: first_champion}
    rec = reg.audit_log()[-1]
    assert (rec["action"], rec["version"], rec["champion"], rec["by"], rec["reason"]) == ("reject", version, first_champion, "bob", "orders flat")
    result = runner.invoke(app, ["approve", version, "--reviewer", "alice", "--reason", "changed my mind", "--root", str(project)], env={"ONEVISION_REVIEWER": "alice"})
    assert result.exit_code == 2 and "not awaiting approval (status: rejected)" in result.output


def test_rollback_restores_the_previous_champion(project, first_champion):
    before = registry(project).aliases()[CHAMPION]
    version, report = new_candidate(project, evaluate=better(0.02))
    assert report.passed
    gates = {r.name: r for r in report.results}
    assert gates["champion.hr@10"].threshold == pytest.approx(0.62 * 0.98)  # read from the champion's tags
    approve(Project.open(project), version=version, reviewer="bob", reason="better than champion")
    reg = registry(project)
    assert reg.aliases() == {CHAMPION: version, PREVIOUS: before}
    result = runner.invoke(app, ["rollback", "--reason", "conversion dropped in production", "--by", "oncall", "--root", str(project)],
                           env={"ONEVISION_REVIEWER": "oncall"})
    assert result.exit_code == 0, result.output
    assert reg.aliases() == {CHAMPION: before}
    assert reg.status(reg.version(version)) == ROLLED_BACK and reg.status(reg.version(before)) == "champion"
    assert reg.audit_log()[-1]["action"] == "rollback" and reg.audit_log()[-1]["rolled_back"] == version
    result = runner.invoke(app, ["rollback", "--reason", "again", "--root", str(project)])
    assert result.exit_code == 2 and "no previous-champion" in result.output
    result = runner.invoke(app, ["models", "--root", str(project)])
    assert result.exit_code == 0 and "rolled-back" in result.output and "gates-failed" in result.output


def test_champion_loads_and_predicts(project, first_champion):
    import mlflow
    from mlflow.exceptions import MlflowException

    from onevision.registry.model_registry import scoped_tracking_uri

    with scoped_tracking_uri(f"sqlite:///{project / 'mlflow.db'}"):  # no leak into later tests
        model = mlflow.pyfunc.load_model("models:/onevision@champion")
    images = item_images()
    out = model.predict(pd.DataFrame({"image": [encode_png(images[5]), encode_png(images[9])], "user_id": [3, -1]}), params={"k": 4})
    assert [row[0] for row in out["item_ids"]] == [105, 109]
    assert all(len(row) == 4 for row in out["item_ids"]) and out["scores"][0][0] >= out["scores"][0][1]
    with pytest.raises(MlflowException, match="bad request: row 0: image does not decode"):
        model.predict(pd.DataFrame({"image": [b"not an image"]}))


def test_search_cli(project, first_champion, tmp_path):
    query = tmp_path / "query.png"
    query.write_bytes(encode_png(item_images()[12]))
    result = runner.invoke(app, ["search", "--image", str(query), "-k", "3", "--json", "--root", str(project)])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["results"]
    assert hits[0]["item_id"] == 112 and len(hits) == 3
    local = runner.invoke(app, ["search", "--image", str(query), "--project", str(project), "--root", str(project)])
    assert local.exit_code == 0 and "112" in local.output.splitlines()[2]
    # A photo of another size and mode (a 280 x 280 RGB JPEG) is normalised as at import, not refused.
    wide = tmp_path / "wide.jpg"
    Image.fromarray(np.repeat(np.kron(item_images()[12], np.ones((10, 10), np.uint8))[:, :, None], 3, axis=2)).save(wide, quality=95)
    result = runner.invoke(app, ["search", "--image", str(wide), "-k", "3", "--json", "--root", str(project)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["results"][0]["item_id"] == 112
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"%PDF-1.7 not a photo")
    result = runner.invoke(app, ["search", "--image", str(bad), "--root", str(project)])
    assert result.exit_code == 2 and "image does not decode as PNG or JPEG" in result.output and "object at 0x" not in result.output


# --------------------------------------------------------------------------- REST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def scoring_server(project, first_champion, tmp_path):
    """`mlflow models serve` of the champion on a free loopback port; always stopped."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/onevision@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env={**env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "scoring server did not answer /ping"
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_rest_scoring_server_answers_and_rejects_bad_requests(scoring_server):
    from onevision.serving.pyfunc import rest_payload

    images = item_images()
    status, body = post(f"{scoring_server}/invocations", rest_payload([encode_png(images[7]), encode_png(images[3])], [5, -1], k=3))
    assert status == 200, body
    assert [p["item_ids"][0] for p in body["predictions"]] == [107, 103] and len(body["predictions"][0]["scores"]) == 3
    status, body = post(f"{scoring_server}/invocations", {"dataframe_split": {"columns": ["image"], "data": [[rest_payload([encode_png(images[1])])["dataframe_records"][0]["image"]]]}})
    assert status == 200 and body["predictions"][0]["item_ids"][0] == 101 and len(body["predictions"][0]["item_ids"]) == 10
    bad_requests = [
        (rest_payload([b"GIF89a not really"]), "image does not decode"),
        (rest_payload([encode_png(images[0])], k=1000), "k must be between 1 and 100"),
        ({"dataframe_records": [{"user_id": 3}]}, "missing inputs ['image']"),
    ]
    for payload, message in bad_requests:
        status, body = post(f"{scoring_server}/invocations", payload)
        assert status == 400, (message, body)
        assert message in body["message"], body["message"][-500:]
        if "missing inputs" not in message:  # ours: short, no echo of the request (MLflow's schema errors keep their prefix)
            assert body["message"].startswith("bad request: ") and "Failed to predict" not in body["message"], body["message"][:500]
    from PIL import Image

    buf = io.BytesIO()  # a phone-sized JPEG (1200 x 900) of query 7's product: cropped and resized, not refused
    Image.fromarray(images[7]).resize((1200, 900), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    status, body = post(f"{scoring_server}/invocations", rest_payload([buf.getvalue()], k=3))
    assert status == 200, body
    assert body["predictions"][0]["item_ids"], body
    with urllib.request.urlopen(f"{scoring_server}/ping", timeout=5) as resp:  # still serving after bad requests
        assert resp.status == 200


def test_a_champion_set_outside_the_gates_is_caught(project, first_champion, tmp_path):
    """The bypass: the MLflow UI's "Aliases: Add" (the plain API) on a gates-failed version."""
    import mlflow

    from onevision.promotion.workflow import verify_champion
    from onevision.registry.model_registry import scoped_tracking_uri

    reg = registry(project)
    assert verify_champion(reg).approved  # every move so far went through approve / rollback
    honest = reg.aliases()[CHAMPION]
    failed = next(str(mv.version) for mv in reg.versions() if reg.status(mv) == GATES_FAILED)
    reg.client.set_registered_model_alias("onevision", CHAMPION, failed)
    check = verify_champion(reg)
    assert not check.approved and check.version == failed and "outside `onevision approve`" in check.reason

    listed = runner.invoke(app, ["models", "--root", str(project)])
    assert listed.exit_code == 0 and "UNAPPROVED" in listed.output and "restores an audited champion" in listed.output
    query = tmp_path / "query.png"
    query.write_bytes(encode_png(item_images()[12]))
    refused = runner.invoke(app, ["search", "--image", str(query), "--root", str(project)])
    assert refused.exit_code == 2 and f"champion v{failed}" in refused.output and "Traceback" not in refused.output
    with scoped_tracking_uri(f"sqlite:///{project / 'mlflow.db'}"), pytest.raises(Exception, match="refusing to serve"):
        mlflow.pyfunc.load_model("models:/onevision@champion")  # what `mlflow models serve` loads
    from onevision.promotion.workflow import UnapprovedChampion, check_registry_champion

    with pytest.raises(UnapprovedChampion, match="onevision drift"):  # what the drift monitor checks first
        check_registry_champion(Project.open(project), "onevision drift")

    # warn instead of refuse, by configuration
    cfg_text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(cfg_text.replace("unapproved_champion: refuse", "unapproved_champion: warn"))
    try:
        warned = runner.invoke(app, ["search", "--image", str(query), "--root", str(project)])
        assert warned.exit_code == 0, warned.output
    finally:
        (project / "params.yaml").write_text(cfg_text)
        reg.client.set_registered_model_alias("onevision", CHAMPION, honest)
    assert verify_champion(reg).approved


def test_the_candidate_page_shows_candidate_champion_and_mca_in_a_browser(project, first_champion):
    import base64

    from tests.support.browser import open_page

    images = item_images()
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    queries = [{"title": f"query {q}", "photo": b64(encode_png(images[q])), "target": 100 + q, "user_id": -1,
                "lists": {"onevision": [100 + (q + j) % 20 for j in range(10)], "mca": [100 + (q + 1 + j) % 20 for j in range(10)]}}
               for q in (2, 7, 11)]
    (project / "reports").mkdir(exist_ok=True)
    (project / "reports/evaluate_examples.json").write_text(json.dumps(
        {"queries": queries, "thumbnails": {str(100 + i): b64(encode_png(images[i])) for i in range(len(images))}}))
    champion = registry(project).aliases()[CHAMPION]
    version, report = new_candidate(project, evaluate=better(0.01))
    page = project / "reports/candidate.html"
    assert page.exists()
    seen = open_page(page)
    assert f"candidate v{version}" in seen.text and f"champion v{champion}" in seen.text and "mca" in seen.text
    assert seen.images_rendered == seen.images >= 3 * (1 + 3 * 10)  # photo + three lists of ten per query
    artifacts = {f.path for f in registry(project).client.list_artifacts(registry(project).version(version).tags["run_id"], "gate_report")}
    assert "gate_report/candidate.html" in artifacts
    (project / "reports/candidate.png").write_bytes(seen.screenshot)
