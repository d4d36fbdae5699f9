"""`onevision search`: one query against the champion (or any model URI, or a local project).

Registered in onevision/app/cli.py with ``app.add_typer(commands)``. Heavy imports stay inside the command.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from onevision import paths
from onevision.app.common import fail, open_project
from onevision.app.options import JsonOpt, RootOpt
from onevision.config import PARAMS_FILE
from onevision.project import Project, read_config
from onevision.registry.model_registry import CHAMPION, scoped_tracking_uri, version_id

commands = typer.Typer()


def load_search_model(project: Project, model_uri: str | None, local: Path | None):
    """A pyfunc-like object with predict(frame, params): a local project's artifacts (``local``), or a registry/model
    URI in ``project``'s registry."""
    cfg = project.cfg
    if local is not None:
        # lazy: mlflow, numpy, pandas only when this command runs
        from onevision.serving.bundle import manifest_for
        from onevision.serving.pyfunc import OneVisionModel

        local_cfg = read_config(local) if (local / PARAMS_FILE).exists() else cfg
        model = OneVisionModel.from_directory(local, manifest_for(local_cfg))
        return model, str(local)
    # lazy: mlflow only when this command runs
    import mlflow

    uri = model_uri or f"models:/{cfg.registry.model_name}@champion"
    if uri.endswith("@champion"):  # only what the gates and a reviewer approved is served as champion
        # lazy: mlflow, numpy, pandas only when this command runs
        from onevision.promotion.workflow import enforce_champion

        enforce_champion(cfg, project.registry(), "onevision search")

    policy = os.environ.get("ONEVISION_UNAPPROVED_CHAMPION")
    os.environ["ONEVISION_UNAPPROVED_CHAMPION"] = cfg.registry.unapproved_champion  # the model's own load check agrees
    try:
        with scoped_tracking_uri(project.tracking_uri):
            return mlflow.pyfunc.load_model(uri), uri
    finally:
        if policy is None:
            os.environ.pop("ONEVISION_UNAPPROVED_CHAMPION", None)
        else:
            os.environ["ONEVISION_UNAPPROVED_CHAMPION"] = policy


def registered_versions(project: Project) -> list[tuple[str, str]] | None:
    """(version, status) of the registered model, newest first; None when the registry does not answer."""

    try:
        registry = project.registry()
        return [(str(mv.version), registry.status(mv)) for mv in registry.versions()]
    except Exception:  # noqa: BLE001 - the listing only decorates an error message
        return None


def has_champion(project: Project) -> bool | None:
    """Whether the champion alias is set; None when the registry does not answer."""

    try:
        return project.registry().by_alias(CHAMPION) is not None
    except Exception:  # noqa: BLE001
        return None


def no_champion_message(project: Project, image: Path | None = None) -> str:
    """What to do when ``models:/<name>@champion`` does not exist: how to make one, and what works meanwhile
    (for `onevision search --image IMAGE`, or for `onevision serve` when ``image`` is None)."""
    name = project.cfg.registry.model_name
    versions = registered_versions(project)
    run = f"onevision search --image {image}" if image is not None else "onevision serve"
    lines = [
        f"no champion yet: model '{name}' has no 'champion' alias in {project.tracking_uri}.",
        "To make one:",
        "  onevision promote                                        # register this project's model, check its gates",
        "  onevision approve VERSION --reason TEXT  # a reviewer in registry.reviewers, as themselves, makes it champion",
        f"Meanwhile, {'search' if image is not None else 'serve'} another model:",
    ]
    if versions:
        shown = ", ".join(f"{v} ({status})" for v, status in versions[:8]) + (", ..." if len(versions) > 8 else "")
        lines.append(f"  {run} --model models:/{name}/{versions[0][0]}   # versions: {shown}")
    elif versions is None:
        lines.append(f"  {run} --model models:/{name}/VERSION   # `onevision models` lists them")
    if image is not None:
        lines.append(f"  {run} --project DIR   # a local trained project root, no registry")
    if versions == []:
        lines.append(f"(no version of '{name}' is registered yet, so --model has nothing to load)")
    return "\n".join(lines)


def write_search_sheet(path: Path, image: Path, *, item_ids: list[int], source: str, user: int, catalog_root: Path, cfg) -> Path:
    """One query as an HTML page (the evaluation report's layout): the photo and the results' thumbnails."""
    # lazy: pandas only when this command runs
    import pandas as pd

    # lazy: numpy only when this command runs
    from onevision.data.images import normalize_photo
    from onevision.evaluation.visual import Page, Row, catalog_lookups, write_page

    items_path = Path(catalog_root) / paths.VALIDATED / "items.parquet"
    if items_path.exists():
        photo, label, category = catalog_lookups(Path(catalog_root), pd.read_parquet(items_path))
    else:  # no catalog here: ids only
        photo, label, category = (lambda i: None), (lambda i: ""), (lambda i: None)
    who = f"shopper {user}" if user >= 0 else "anonymous"
    page = Page(title=f"onevision search — {image.name}", facts={"model": source, "user": who, "results": len(item_ids)},
                headline=[], table=[], rows=[Row(image.name, normalize_photo(image.read_bytes(), 128, 3), -1, {source: item_ids})],
                personal=[], personal_note="", plots=[], item_photo=photo, item_label=label, category_of=category)
    return write_page(page, path)


@commands.command()
def search(
    *,
    image: Annotated[Path, typer.Option("--image", help="Query photo: PNG or JPEG, any size (cropped and resized as at import).", exists=True, dir_okay=False)],
    user: Annotated[int, typer.Option("--user", help="Shopper id; -1 or an unknown id: anonymous.")] = -1,
    k: Annotated[int, typer.Option("--k", "-k", help="Results to return.")] = 10,
    model: Annotated[str | None, typer.Option("--model", help="MLflow model URI (default: models:/<registry.model_name>@champion).")] = None,
    project: Annotated[
        Path | None, typer.Option("--project", help="Serve a local trained project root instead of the registry.", file_okay=False, exists=True)
    ] = None,
    as_json: JsonOpt = False,
    sheet: Annotated[
        Path | None, typer.Option("--sheet", help="Also write an HTML page with the query photo and the results as thumbnails (photos from the project's catalog).", dir_okay=False)
    ] = None,
    root: RootOpt = Path("."),
) -> None:
    """Search the catalog with a photo: top-k item ids with scores."""

    here = open_project(root)
    cfg = here.cfg
    # lazy: mlflow, pandas only when this command runs
    import pandas as pd
    from mlflow.exceptions import MlflowException

    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.workflow import UnapprovedChampion
    from onevision.serving.queries import InvalidQuery

    try:
        predictor, source = load_search_model(here, model, project)
    except UnapprovedChampion as exc:
        fail(str(exc))
    except (MlflowException, OSError, ValueError, ImportError) as exc:
        if model is None and project is None and has_champion(here) is False:
            fail(no_champion_message(here, image))
        if project is not None:
            fail(f"cannot load the project {project}: {exc}\n--project needs a trained project root (`onevision retrain` writes its artifacts)")
        fail(f"cannot load the model {model or 'champion'}: {exc}\n`onevision models` lists the registered versions "
              "(--model models:/NAME/VERSION); --project DIR searches a local trained project")
    frame = pd.DataFrame({"image": [image.read_bytes()], "user_id": [user]})
    try:
        if hasattr(predictor, "search"):  # a local project: the same checks, without MLflow
            # lazy: numpy only when this command runs
            from onevision.serving.queries import parse_k

            result = predictor.search(frame, parse_k({"k": k}, predictor.spec))
        else:
            result = predictor.predict(frame, params={"k": k})
    except InvalidQuery as exc:
        fail(f"bad request: {exc}")
    except MlflowException as exc:
        fail(exc.message)
    row = result.iloc[0]
    hits = [{"rank": i + 1, "item_id": int(item), "score": float(score)} for i, (item, score) in enumerate(zip(row["item_ids"], row["scores"], strict=True))]
    if sheet is not None:
        write_search_sheet(sheet, image, item_ids=[h["item_id"] for h in hits], source=source, user=user, catalog_root=project or root, cfg=cfg)
    if as_json:
        typer.echo(json.dumps({"model": source, "user_id": user, "results": hits}, indent=2))
        return
    typer.echo(f"model: {source}   user: {user if user >= 0 else 'anonymous'}")
    typer.echo(f"{'rank':>4}  {'item_id':>10}  {'score':>10}")
    for hit in hits:
        typer.echo(f"{hit['rank']:>4}  {hit['item_id']:>10}  {hit['score']:>10.4f}")


@commands.command()
def serve(
    model: Annotated[str | None, typer.Option("--model", help="MLflow model URI (default: the champion, checked against its approval record).")] = None,
    host: Annotated[str, typer.Option("--host", "-h", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 5001,
    print_command: Annotated[bool, typer.Option("--print-command", help="Print the mlflow command instead of running it.")] = False,
    root: RootOpt = Path("."),
) -> None:
    """Serve the champion over REST (`mlflow models serve` on its registered version), after checking that it exists
    and was approved; without a champion, say how to get one and what to serve meanwhile."""

    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.workflow import UnapprovedChampion, enforce_champion

    here = open_project(root)
    cfg, uri = here.cfg, here.tracking_uri
    if model is None:
        try:
            registry = here.registry()
            champion = registry.by_alias(CHAMPION)
        except Exception as exc:  # noqa: BLE001 - the registry does not answer: say where it looked
            fail(f"the model registry at {uri} does not answer ({exc}); set tracking.tracking_uri or MLFLOW_TRACKING_URI")
        if champion is None:
            fail(no_champion_message(here))
        try:
            enforce_champion(cfg, registry, "onevision serve")
        except UnapprovedChampion as exc:
            fail(str(exc))
        model = f"models:/{cfg.registry.model_name}/{version_id(champion)}"  # pinned: a later alias move needs a restart
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow_bin, "models", "serve", "-m", model, "--env-manager", "local", "-h", host, "-p", str(port)]
    if print_command:
        typer.echo(" ".join(command))
        return
    typer.echo(f"serving {model} on http://{host}:{port}/invocations (registry {uri})", err=True)
    os.execvpe(command[0], command, {**os.environ, "MLFLOW_TRACKING_URI": uri, "ONEVISION_UNAPPROVED_CHAMPION": cfg.registry.unapproved_champion})
