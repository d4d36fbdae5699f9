"""Your own catalog end to end: the README's section run verbatim on the example RGB catalog.

import -> validate -> retrain (pretrained EfficientNet-Lite0, no simulator) -> promote -> search with a
phone-sized photo; then a changed price and a changed photo rerun `prepare` and what depends on it, and
an unchanged catalog reruns nothing. Metrics come from the logged clicks and orders, named for that.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests import REPO
from tests.support.projects import build_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    """The shell lines of the README's "Your own catalog" section (its first bash block)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own catalog", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: the own-catalog section lost its bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def sh(project: Path, command: str, timeout: int = 900, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if PREFECT_API_URL.value():  # the session's server: no temporary Prefect server per command
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    proc = subprocess.run(["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in ok, f"{command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc_changed(project: Path) -> set[str]:
    out = sh(project, "dvc status --json").stdout
    return set(json.loads(out or "{}"))


@pytest.fixture(scope="module")
def catalog_project(tmp_path_factory, isolated_state, prefect_server):
    project = build_project(tmp_path_factory.mktemp("own-catalog") / "shop", "checkout").root
    outputs = {}
    for command in readme_commands():
        verb = command.split()[1]
        # promote says "gates failed" with exit 1, as the README's comment tells: a verdict, not an error
        outputs[verb] = sh(project, command, ok=(0, 1) if verb == "promote" else (0,))
    return project, outputs


def test_the_readme_commands_cover_the_whole_path():
    verbs = [line.split()[1:3] for line in readme_commands()]
    assert [v[0] for v in verbs] == ["data", "data", "data", "retrain", "promote", "search"]


def test_retrain_trains_and_evaluates_on_logged_feedback(catalog_project):
    project, _ = catalog_project
    assert not (project / "data/validated/user_tastes.parquet").exists()  # no simulator here
    results = json.loads((project / "metrics/evaluate.json").read_text())
    for system in ("onevision", "mca"):
        m = results[system]
        assert m["logged_orders_per_1k"] > 0 and m["logged_clicks_per_1k"] > 0, system
        assert not any(key.startswith("sim_") for key in m), system
    assert "vs_mca_logged_orders_per_1k_delta" in results["onevision"]
    report = (project / "reports/evaluate.md").read_text()
    assert "simulated" not in report.lower()  # nothing is called simulated where no simulator exists
    assert "Replay of the search log" in report
    for stage in ("sft", "dpo"):
        assert json.loads((project / f"metrics/{stage}.json").read_text())["selection_metric"] == "logged_orders_per_query"
    pruning = json.loads((project / "models/pruning/pruning.json").read_text())
    assert "logged_orders_per_1k" in pruning["quality_loss"]  # the guard measured orders: a point could be chosen
    assert json.loads((project / "metrics/mca.json").read_text())["recall_k"] == 64  # capped by the catalog


def test_promotion_gates_on_logged_orders(catalog_project):
    project, outputs = catalog_project
    promoted = json.loads(outputs["promote"].stdout[: outputs["promote"].stdout.rindex("}") + 1])
    assert promoted["version"] == "1"
    assert promoted["status"] == ("awaiting-approval" if outputs["promote"].returncode == 0 else "gates-failed")
    gate = (project / "reports/gate_report.md").read_text()
    row = next(line for line in gate.splitlines() if line.startswith("| baseline.orders"))
    mca = json.loads((project / "metrics/evaluate.json").read_text())["mca"]["logged_orders_per_1k"]
    assert f"mca {mca:.4g}" in row, row


def test_the_visual_report_shows_photos_and_numbers_in_a_browser(catalog_project):
    from tests.support.browser import open_page

    project, outputs = catalog_project
    sheet = project / "reports/evaluate.html"
    assert str(sheet) in outputs["retrain"].stdout  # the retrain summary points to it
    seen = open_page(sheet)
    assert seen.images >= 8 * 21 and seen.images_rendered == seen.images  # 8 queries x (photo + 2 x 10), plots
    results = json.loads((project / "metrics/evaluate.json").read_text())
    for system in ("onevision", "mca"):
        assert f"{results[system]['hr@10']:.3f}" in seen.text and f"{results[system]['logged_orders_per_1k']:.1f}" in seen.text
    assert "one photo, two shoppers" in seen.text
    (project / "reports/evaluate.png").write_bytes(seen.screenshot)


def test_search_takes_a_phone_sized_photo(catalog_project):
    project, outputs = catalog_project
    assert "rank" in outputs["search"].stdout
    queries = (project / "my-data/queries.csv").read_text().splitlines()
    target = int(queries[1 + 7].split(",")[2])
    big = project / "phone.jpg"
    Image.open(project / "my-data/photos/queries/00007.jpg").resize((1200, 900)).save(big, quality=90)
    found = json.loads(sh(project, f"onevision search --project . --image {big} --user 3 --json --sheet sheet.html").stdout)
    ids = [r["item_id"] for r in found["results"]]
    assert len(ids) == 10 and target in ids
    from tests.support.browser import open_page

    seen = open_page(project / "sheet.html")  # the query photo and the 10 results as thumbnails
    assert seen.images == 11 and seen.images_rendered == 11 and all(f"#{i}" in seen.text for i in ids)


def test_changed_price_or_photo_reruns_prepare_and_nothing_else_changes_nothing(catalog_project):
    project, _ = catalog_project
    deps = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["prepare"]["deps"]
    assert {"my-data/catalog.csv", "my-data/queries.csv", "my-data/photos"} <= set(deps)
    assert dvc_changed(project) == set()  # trained and unchanged
    (project / "notes.txt").write_text("not data")  # an unrelated file
    os.utime(project / "my-data/photos/items/0000_0.jpg")  # touched, same bytes
    assert dvc_changed(project) == set()

    catalog = project / "my-data/catalog.csv"
    original = catalog.read_text()
    lines = original.splitlines()
    head, *rest = lines[1].rsplit(",", 1)
    lines[1] = f"{head},{float(rest[0]) + 1:.2f}"  # one price
    catalog.write_text("\n".join(lines) + "\n")
    assert dvc_changed(project) == {"prepare"}  # the only stage whose own deps changed
    out = sh(project, "onevision retrain --until split").stdout
    assert re.search(r"^prepare\s+ran", out, re.M) and re.search(r"^validate\s+ran", out, re.M), out
    assert "align_encoder" in dvc_changed(project)  # the new tables reach the training stages

    photo = project / "my-data/photos/items/0001_0.jpg"  # one photo: new bytes
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo, quality=88)
    assert "prepare" in dvc_changed(project)
