"""The Prefect flows as a worker running a deployment loads them: by file path, with Prefect's own loader."""

from __future__ import annotations

from tests import REPO


def load(entrypoint: str):
    """``load("drift.py:drift_monitor")``: the flow object of ``flows/drift.py`` (prefect.yaml's entrypoint)."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(f"{REPO / 'flows' / entrypoint}", use_placeholder_flow=False)
