"""The registry's decision lock on a real (SQLite) MLflow registry, including the clash that lost its lock meanwhile."""

from __future__ import annotations

import pytest
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

from onevision.registry.model_registry import LOCK_SUFFIX, ModelRegistry, PromotionError


@pytest.fixture
def registry(tmp_path):
    reg = ModelRegistry("onevision", f"sqlite:///{tmp_path / 'mlflow.db'}")
    reg.ensure_model()
    return reg


def lock_exists(registry: ModelRegistry) -> bool:
    return registry._lock_tags(f"{registry.name}{LOCK_SUFFIX}") is not None


def test_the_lock_is_held_inside_the_block_and_released_after(registry):
    with registry.decision_lock():
        assert lock_exists(registry)
    assert not lock_exists(registry)


def test_a_clash_whose_holder_released_meanwhile_is_retried_not_raised(registry, monkeypatch):
    """MLflow's SQL store answers a name clash by reading the existing model; when the holder deleted it in between,
    create_registered_model raises RESOURCE_DOES_NOT_EXIST (seen in CI with four reviewers approving at once)."""
    create = registry.client.create_registered_model
    calls = []

    def racing_create(name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 1:
            raise registry.mlflow_error(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)
        return create(name, *args, **kwargs)

    monkeypatch.setattr(registry.client, "create_registered_model", racing_create)
    with registry.decision_lock(timeout_s=10):
        assert lock_exists(registry)
    assert len(calls) == 2
    assert not lock_exists(registry)


def test_a_lock_held_elsewhere_times_out_with_a_message(registry):
    with registry.decision_lock(), pytest.raises(PromotionError, match="in progress.*try again"):
        with registry.decision_lock(timeout_s=0.5):
            pass


def test_other_registry_errors_are_not_swallowed(registry, monkeypatch):
    def refused(name, *args, **kwargs):
        raise registry.mlflow_error("permission denied", PERMISSION_DENIED)

    monkeypatch.setattr(registry.client, "create_registered_model", refused)
    with pytest.raises(registry.mlflow_error, match="permission denied"), registry.decision_lock(timeout_s=1):
        pass
