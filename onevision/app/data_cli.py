"""`onevision data ...`: build the demo shop or an example catalog, import a catalog of your own, validate a
dataset folder (docs/own-catalog.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onevision import atomic
from onevision.app.common import fail, load_project, project_config, setup_logging
from onevision.app.options import ProfileOpt, RootOpt, SetOpt

data_app = typer.Typer(help="Build, import and validate datasets.", no_args_is_help=True)


@data_app.command("build-demo")
def data_build_demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Parquet tables.")],
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Build the Fashion-MNIST demo shop (items, views, users, queries, impressions, interactions)."""
    setup_logging()
    cfg = load_project(root, profile, overrides)
    # lazy: numpy, pandas only when this command runs
    from onevision.data.demo import build_demo
    from onevision.data.tables import write_tables

    tables = build_demo(cfg)
    for name, path in write_tables(tables, out).items():
        typer.echo(f"{name:<14} {len(tables[name]):>8} rows  {path}")


@data_app.command("example-catalog")
def data_example_catalog(
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write photos/, catalog.csv and queries.csv into.")],
    items: Annotated[int, typer.Option(help="Products (3 photos each).", min=8)] = 64,
    users: Annotated[int, typer.Option(help="Shoppers in the search log.", min=1)] = 20,
    queries: Annotated[int, typer.Option(help="Photo searches in the log (10 results shown each, with clicks and orders).", min=20)] = 480,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    root: RootOpt = Path("."),
) -> None:
    """Write a small example of your own catalog (colour JPEGs, catalog CSV, search log) to try the import path.

    The files have the format `onevision data import` reads (docs/own-catalog.md); the garments come
    from the Fashion-MNIST folder of params.yaml (data.fashion_mnist_dir), so nothing is downloaded.
    """
    setup_logging()
    # lazy: numpy only when this command runs
    from onevision.data.example_catalog import ExampleSpec, write_example_catalog

    cfg = project_config(root)
    try:
        counts = write_example_catalog(out, cfg.data.fashion_mnist_dir, ExampleSpec(n_items=items, n_users=users, n_queries=queries, seed=seed))
    except FileNotFoundError as exc:
        fail(f"{exc}; the example garments come from Fashion-MNIST: apt-get install dataset-fashion-mnist")
    typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()) + f" written to {out}/ (photos/, catalog.csv, queries.csv)")


@data_app.command("import")
def data_import(
    *,
    catalog: Annotated[Path, typer.Option("--catalog", help="CSV: item_id, image_paths (';'-separated), category, brand, price.", exists=True, dir_okay=False)],
    images: Annotated[Path, typer.Option("--images", help="Folder holding the photos; paths in the CSVs are relative to it.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Parquet tables.")],
    queries: Annotated[Path | None, typer.Option("--queries", help="Optional query log CSV.", exists=True, dir_okay=False)] = None,
    image_size: Annotated[int | None, typer.Option(help="Resize photos to this square side (default: the project's data.image_size).")] = None,
    channels: Annotated[int | None, typer.Option(help="1 grayscale or 3 RGB (default: the project's data.image_channels).")] = None,
    profile: ProfileOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Import a catalog of your own product photos into the canonical tables (photos are not modified).

    Sizes default to the project's params.yaml (as `onevision data validate` does), so the two agree.
    """
    setup_logging()
    # lazy: numpy, pandas, pandera only when this command runs
    from onevision.data.importer import import_catalog
    from onevision.data.tables import write_tables

    cfg = project_config(root, profile)
    image_size = image_size or cfg.data.image_size
    channels = channels or cfg.data.image_channels
    if channels not in (1, 3):
        fail("--channels must be 1 or 3")
    try:
        tables = import_catalog(catalog, images, queries_csv=queries, image_size=image_size, image_channels=channels)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for name, path in write_tables(tables, out).items():
        typer.echo(f"{name:<14} {len(tables[name]):>8} rows  {path}")


@data_app.command("validate")
def data_validate(
    *,
    path: Annotated[Path, typer.Argument(help="Folder of Parquet tables (items.parquet, views.parquet, ...).", exists=True, file_okay=False)],
    image_root: Annotated[Path | None, typer.Option(help="Folder that image_path columns are relative to.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Expected image side (default: data.image_size).")] = None,
    channels: Annotated[int | None, typer.Option(help="Expected channels 1|3 (default: data.image_channels).")] = None,
    max_bad_fraction: Annotated[float | None, typer.Option(help="Fail above this quarantined share per table (default: validate.max_bad_fraction).")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the markdown report here.")] = None,
    profile: ProfileOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Validate a dataset folder. Exit 0 when clean, 1 with the report otherwise. Never modifies the input."""
    setup_logging()
    cfg = project_config(root, profile)
    # lazy: numpy, pandas, pandera only when this command runs
    from onevision.data.validation import validate_folder

    try:
        result = validate_folder(
            path,
            image_root=image_root,
            image_size=image_size or cfg.data.image_size,
            image_channels=channels or cfg.data.image_channels,
            check_images=cfg.validate_.check_images,
            max_bad_fraction=cfg.validate_.max_bad_fraction if max_bad_fraction is None else max_bad_fraction,
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    text = result.report_markdown()
    if report:
        atomic.write_text(report, text)
    clean = result.passed and len(result.quarantine) == 0
    typer.echo(text, err=not clean)
    if not clean:
        raise typer.Exit(1)
