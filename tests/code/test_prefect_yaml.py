"""prefect.yaml validates with Prefect's own models (what `prefect deploy` uses), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def _deployment(raw: dict, name: str) -> dict:
    by_name = {d["name"]: d for d in raw["deployments"]}
    assert name in by_name, f"deployment {name} missing from prefect.yaml (has {sorted(by_name)})"
    return by_name[name]


def test_file_validates_with_prefects_deploy_models(raw):
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(raw)
    assert model.deployments and all(d.entrypoint and d.work_pool and d.work_pool.name for d in model.deployments)
    allowed = set(type(model.deployments[0]).model_fields)  # the model ignores unknown keys: catch typos here
    for dep in raw["deployments"]:
        assert set(dep) <= allowed, f"unknown keys in deployment {dep['name']}: {set(dep) - allowed}"


def test_drift_deployment_runs_daily_on_a_work_pool(raw):
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    dep = _deployment(raw, "drift-daily")
    assert dep["entrypoint"] == "flows/drift.py:drift_monitor"
    assert dep["work_pool"]["name"] == "onevision-process"  # the pool infra/docker-compose.yml's worker serves
    (schedule,) = [_schedule_config_to_deployment_schedule(s) for s in dep["schedules"]]
    DeploymentScheduleCreate(**schedule)
    cron = schedule["schedule"]
    assert isinstance(cron, CronSchedule) and cron.timezone == "UTC"
    fields = cron.cron.split()
    assert len(fields) == 5 and fields[2:] == ["*", "*", "*"], "expected a daily cron"


def test_drift_deployment_entrypoint_and_parameters_fit_the_flow(raw):
    from prefect.flows import load_flow_from_entrypoint

    from onevision.config import load_config

    dep = _deployment(raw, "drift-daily")
    path, func = dep["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{REPO / path}:{func}")
    assert flow.name == "drift_monitor"
    flow.validate_parameters(dep.get("parameters", {}))
    # the overrides the deployment passes are valid config overrides
    load_config(REPO / "params.yaml", overrides=dep["parameters"].get("overrides", []))
    deployment = flow.to_deployment(name=dep["name"], cron=dep["schedules"][0]["cron"], parameters=dep["parameters"])
    assert deployment.schedules and deployment.entrypoint.endswith("drift.py:drift_monitor")


@pytest.mark.parametrize(("name", "flow_name"), [("retrain", "retrain"), ("promote", "promotion")])
def test_on_demand_deployments_fit_their_flows(raw, name, flow_name):
    from prefect.flows import load_flow_from_entrypoint

    dep = _deployment(raw, name)
    assert not dep.get("schedules"), f"{name} is triggered on demand, not scheduled"
    assert dep["work_pool"]["name"] == "onevision-process"
    path, func = dep["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{REPO / path}:{func}")
    assert flow.name == flow_name
    flow.validate_parameters(dep.get("parameters", {}))
    # what the description tells a user to type names this deployment
    assert f"prefect deployment run {flow_name}/{name}" in dep["description"]
