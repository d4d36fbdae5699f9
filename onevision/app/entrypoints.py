"""The Prefect flows the command line runs: the files in ``flows/`` at the repository root, loaded by path
with Prefect's own loader, as a worker loads a deployment's entrypoint (prefect.yaml). One route per job:
``onevision retrain`` and the ``retrain`` deployment execute the same file.

The files are found next to the installed package (``pip install -e .`` from the repository), not under
``--root``: a project directory need not be the repository. The package never imports ``flows`` or
``tasks`` as modules (the import contracts in pyproject.toml); it only loads their files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import onevision

RETRAIN = "retrain.py:retrain"
PROMOTION = "promote.py:promotion"
DRIFT = "drift.py:drift_monitor"
EVALUATE_SHARDED = "sharded.py:evaluate_sharded"


class FlowUnavailable(RuntimeError):
    """A flow file is missing next to the installed package, or fails to load."""


def repository() -> Path:
    """The source tree the package runs from: the folder holding ``onevision/``, ``flows/`` and ``tasks/``."""
    return Path(onevision.__file__).resolve().parents[1]


def flow_file(entrypoint: str) -> Path:
    """The file of ``entrypoint`` (``"drift.py:drift_monitor"``) under the repository's ``flows/``."""
    path = repository() / "flows" / entrypoint.rsplit(":", 1)[0]
    if not path.is_file() or not (repository() / "tasks").is_dir():
        raise FlowUnavailable(
            f"{path} not found: the command line runs the Prefect flows in flows/ and tasks/ next to the package "
            f"({repository()}); install OneVision from its repository with `pip install -e .` (a wheel carries "
            "neither folder), or run the deployment on a worker (prefect.yaml)")
    return path


def load_flow(entrypoint: str) -> Any:
    """The flow object of ``entrypoint``, loaded from its file by Prefect's loader (``load_flow_from_entrypoint``).

    The loader puts the working directory and the flow's folder on ``sys.path``; a worker starts in the
    repository, the command line anywhere, so the repository goes first on the path here: ``from tasks.x
    import y`` in a flow file then resolves the same way in both.
    """
    path = flow_file(entrypoint)
    repo = str(repository())
    if repo not in sys.path:
        sys.path.insert(0, repo)
    # lazy: Prefect only when a command runs a flow
    from prefect.exceptions import ScriptError
    from prefect.flows import load_flow_from_entrypoint

    try:
        return load_flow_from_entrypoint(f"{path}:{entrypoint.rsplit(':', 1)[1]}", use_placeholder_flow=False)
    except ScriptError as exc:
        raise FlowUnavailable(f"{path} could not be loaded: {exc.user_exc!r}") from exc
