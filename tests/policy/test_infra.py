"""The infra/ stack is validated, not run (no Docker engine in CI)."""

from __future__ import annotations

import re

import yaml

from tests import REPO

INFRA = REPO / "infra"


def compose():
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_has_the_stack_with_healthchecks():
    services = compose()["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= set(services)
    for name in ("postgres", "minio", "mlflow", "prefect-server"):
        assert "healthcheck" in services[name], name


def test_dependencies_exist_and_ports_are_unique():
    services = compose()["services"]
    for name, svc in services.items():
        for dep in (svc.get("depends_on") or {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    host_ports = [p.split(":")[0] for svc in services.values() for p in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))


def test_databases_used_are_created():
    created = set(re.findall(r"CREATE DATABASE (\w+);", (INFRA / "postgres-init.sql").read_text()))
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"@postgres:5432/(\w+)", text))
    assert used and used <= created


def test_worker_points_at_the_servers_and_image_builds_from_the_project():
    worker = compose()["services"]["worker"]
    env = worker["environment"]
    assert env["PREFECT_API_URL"].startswith("http://prefect-server:4200")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert (INFRA / worker["build"]["dockerfile"].split("/")[-1]).exists()
