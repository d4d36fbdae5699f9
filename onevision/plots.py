"""matplotlib for the plots every stage and report writes: files on the Agg backend, never a screen."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (selected before pyplot loads)."""
    import matplotlib  # lazy: matplotlib only when something is plotted

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib only when something is plotted

    return plt
