"""How often a command turns its project root into a config, a tracking URI and a registry.

``counted = count_resolutions(monkeypatch)``, then run the command: ``counted["load_config"]`` (params.yaml
read), ``counted["tracking_uri"]`` (tracking URI resolved) and ``counted["ModelRegistry"]`` (registries opened).
Every module that imported ``load_config`` or ``tracking_uri`` by name gets the counting one, and so does
any module imported later (a flow file Prefect's loader reads).
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest


def count_resolutions(monkeypatch: pytest.MonkeyPatch) -> Counter:
    import onevision.config
    import onevision.tracking
    from onevision.registry.model_registry import ModelRegistry

    counted: Counter = Counter()

    def counting(name, original):
        def wrapper(*args, **kwargs):
            counted[name] += 1
            return original(*args, **kwargs)
        return wrapper

    for module, name in ((onevision.config, "load_config"), (onevision.tracking, "tracking_uri")):
        original = getattr(module, name)
        wrapper = counting(name, original)
        for loaded in list(sys.modules.values()):
            if getattr(loaded, name, None) is original:
                monkeypatch.setattr(loaded, name, wrapper)
    monkeypatch.setattr(ModelRegistry, "__init__", counting("ModelRegistry", ModelRegistry.__init__))
    return counted
