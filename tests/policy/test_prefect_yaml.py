"""prefect.yaml validates with Prefect's own models (what `prefect deploy` uses), without a server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests import REPO
from tests.support.defaults import default_params_file


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
    load_config(default_params_file(), overrides=dep["parameters"].get("overrides", []))
    deployment = flow.to_deployment(name=dep["name"], cron=dep["schedules"][0]["cron"], parameters=dep["parameters"])
    assert deployment.schedules and deployment.entrypoint.endswith("drift.py:drift_monitor")


@pytest.mark.parametrize(("name", "flow_name"), [("retrain", "retrain"), ("promote", "promotion"), ("evaluate-sharded", "evaluate-sharded")])
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


def test_the_command_line_runs_the_entrypoints_the_deployments_name(raw):
    """One route per job: `onevision retrain|promote|drift|evaluate-sharded` load these very files."""
    from onevision.app import entrypoints

    cli = {f"flows/{e}" for e in (entrypoints.RETRAIN, entrypoints.PROMOTION, entrypoints.DRIFT, entrypoints.EVALUATE_SHARDED)}
    assert cli == {d["entrypoint"] for d in raw["deployments"]}
    assert all(entrypoints.flow_file(e).is_relative_to(REPO / "flows") for e in (entrypoints.RETRAIN, entrypoints.DRIFT))


LOAD_EVERY_ENTRYPOINT = """
import json, sys, yaml
from prefect.flows import load_flow_from_entrypoint
out = {}
for dep in yaml.safe_load(open("prefect.yaml"))["deployments"]:
    flow = load_flow_from_entrypoint(dep["entrypoint"], use_placeholder_flow=False)  # what `prefect deploy` does
    flow.validate_parameters(dep.get("parameters", {}))
    out[dep["name"]] = [flow.name, flow.fn.__code__.co_filename]
import onevision, tasks
out["modules"] = [onevision.__file__, tasks.__file__]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_entrypoint_loads_from_a_fresh_clone(raw, tmp_path):
    """`prefect deploy --all` from a fresh clone: in a new process started in a copy of the checkout's files
    (tracked and new, nothing ignored), every entrypoint of prefect.yaml loads with Prefect's loader, its
    parameters fit, and flows/, tasks/ and onevision/ all come from the clone."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run([sys.executable, "-c", LOAD_EVERY_ENTRYPOINT], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    modules = loaded.pop("modules")
    assert all(path.startswith(str(clone)) for path in modules), modules  # not the installed checkout's copy
    assert set(loaded) == {d["name"] for d in raw["deployments"]}
    assert all(path.startswith(str(clone / "flows")) for _, path in loaded.values()), loaded


# ----------------------------------------------------------------------------- the Kubernetes work pool

K8S = REPO / "infra" / "k8s"
SAME_AS_LOCAL = ("entrypoint", "parameters", "tags", "schedules", "concurrency_limit")


@pytest.fixture(scope="module")
def k8s() -> dict:
    return yaml.safe_load((K8S / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def job_template() -> dict:
    import json

    return json.loads((K8S / "base-job-template.json").read_text())


def test_k8s_deployments_validate_and_run_from_the_image(k8s):
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(k8s)
    assert all(d.work_pool.name == "onevision-k8s" for d in model.deployments)
    assert k8s["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]  # infra/Dockerfile's WORKDIR
    assert "WORKDIR /app" in (REPO / "infra" / "Dockerfile").read_text()


def test_k8s_deployments_are_those_of_prefect_yaml(raw, k8s):
    """Same flows, parameters, schedules and queues as the process pool's: the guide cannot drift from them."""
    local = {d["name"]: d for d in raw["deployments"]}
    cluster = {d["name"]: d for d in k8s["deployments"]}
    assert set(local) <= set(cluster), f"deployments missing on the cluster: {set(local) - set(cluster)}"
    for name, dep in local.items():
        for key in SAME_AS_LOCAL:
            assert cluster[name].get(key) == dep.get(key), f"{name}.{key} differs from prefect.yaml"
        assert cluster[name]["work_pool"]["work_queue_name"] == dep["work_pool"]["work_queue_name"]
    gpu = cluster["retrain-gpu"]
    assert gpu["entrypoint"] == local["retrain"]["entrypoint"]
    assert set(gpu["parameters"]) == set(local["retrain"]["parameters"])


def test_the_base_job_template_is_valid_and_every_job_variable_fits_it(k8s, job_template):
    import jsonschema
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import find_placeholders

    validate_base_job_template(job_template)  # what the server checks on `prefect work-pool create`
    declared = set(job_template["variables"]["properties"])
    used = {p.name for p in find_placeholders(job_template["job_configuration"])}
    assert used <= declared and declared <= used, (used ^ declared)  # no placeholder without a variable, no dead variable
    schema = job_template["variables"]
    jsonschema.Draft202012Validator.check_schema(schema)
    for dep in k8s["deployments"]:
        variables = dep["work_pool"].get("job_variables", {})
        assert set(variables) <= declared, f"{dep['name']}: unknown job variables {set(variables) - declared}"
        jsonschema.validate(variables, schema)
    gpu = next(d for d in k8s["deployments"] if d["name"] == "retrain-gpu")["work_pool"]["job_variables"]
    assert gpu["gpus"] >= 1 and gpu["image"].endswith(":gpu")
    container = job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert container["envFrom"] == [{"secretRef": {"name": "{{ secret_name }}"}}]  # credentials from a Secret only


def test_the_k8s_deployments_carry_no_credentials(k8s):
    text = (K8S / "prefect.yaml").read_text() + (K8S / "base-job-template.json").read_text()
    for needle in ("AKIA", "SECRET_ACCESS_KEY=", "password:", "hooks.slack.com"):
        assert needle not in text
