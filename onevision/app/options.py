"""Command-line options that several commands share, declared once.

Every `onevision` command that reads a project takes the same ``--root``, and
the ones that resolve a configuration take the same ``--profile`` and
``--set``: their names, short flags and help live here so ``--help`` reads
the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RootOpt = Annotated[
    Path,
    typer.Option("--root", help="Project root holding params.yaml, dvc.yaml and the pipeline outputs (and mlflow.db by default).",
                 file_okay=False),
]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-p", help="Named profile from params.yaml (e.g. small, default).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a parameter: section.key=value (repeatable; value read as YAML)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")]
