"""Issue 35 without a server: the server's refusals as one line, the team's grants, `onevision access` idempotence
against a fake admin client, signed and retried notifications on a loopback hook."""

from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException, RestException
from typer.testing import CliRunner

from onevision.app.cli import access_denied, app
from onevision.config import Config
from onevision.promotion import notify
from onevision.promotion.identity import SERVER_IDENTITY, ReviewerNotAllowed, reviewer_identity
from onevision.registry import access
from onevision.registry.access import AccessDenied, denied_as_error, explain_denied, is_denied, setup_access, team_plan
from onevision.registry.model_registry import PromotionError
from tests.support.webhook import receiver

runner = CliRunner()


def forbidden() -> RestException:
    return RestException({"error_code": "PERMISSION_DENIED", "message": "Permission denied"})


# --------------------------------------------------------------------------- 403 / 401 as one line


def test_a_403_becomes_one_line_naming_who_what_and_what_to_do():
    with pytest.raises(AccessDenied) as err, denied_as_error(user="onevision-svc", action="approving v3", model="onevision",
                                                             needed="EDIT", remedy="Ask a reviewer."):
        raise forbidden()
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    assert "'onevision-svc' lacks EDIT on registered model 'onevision'" in text and "HTTP 403" in text and text.endswith("Ask a reviewer.")


def test_a_wrapped_403_is_recognised_and_other_errors_pass_through():
    # MLflow's copy_model_version wraps the server's answer in an INTERNAL_ERROR whose text keeps the 403
    wrapped = MlflowException("Failed to create model version copy. Error: API request ... failed with error code 403 != 200")
    assert is_denied(wrapped) == "403"
    assert is_denied(RestException({"error_code": "UNAUTHENTICATED", "message": "You are not authenticated"})) == "401"
    assert is_denied(MlflowException("no such version", error_code="RESOURCE_DOES_NOT_EXIST")) is None
    with pytest.raises(MlflowException, match="no such version"), denied_as_error(user="a", action="b", model="m", needed="EDIT", remedy=""):
        raise MlflowException("no such version", error_code="RESOURCE_DOES_NOT_EXIST")


def test_a_401_says_to_check_the_credentials():
    line = explain_denied("401", user="alice", action="approving", model="m", needed="EDIT", remedy="")
    assert "did not authenticate 'alice'" in line and "MLFLOW_TRACKING_PASSWORD" in line


def test_the_command_line_turns_a_stray_403_into_one_line(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "stack-reader")
    line = access_denied(forbidden())
    assert line and "'stack-reader'" in line and "HTTP 403" in line and "onevision access check" in line
    assert access_denied(ValueError("unrelated")) is None


# --------------------------------------------------------------------------- identity


def test_the_authenticated_account_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("ONEVISION_REVIEWER", "ml-reviewer")
    assert reviewer_identity(None, authenticated="onevision-svc") == ("onevision-svc", SERVER_IDENTITY)
    with pytest.raises(ReviewerNotAllowed, match="authenticated you as 'onevision-svc'"):
        reviewer_identity("ml-reviewer", authenticated="onevision-svc")
    assert reviewer_identity(None) == ("ml-reviewer", "$ONEVISION_REVIEWER")  # embedded: as before


def test_no_server_no_identity_to_ask_for():
    assert access.server_identity("sqlite:///mlflow.db") is None and access.server_identity(None) is None


# --------------------------------------------------------------------------- the team's grants and `onevision access`


def test_the_plan_keeps_champion_to_reviewers():
    plan = team_plan("onevision", "onevision-candidates", service="svc", reviewers=["alice", "bob"], readers=["ro"])
    writers = {g.user for g in plan if g.model == "onevision"}
    assert writers == {"alice", "bob"} and {(g.user, g.model) for g in plan if g.user == "svc"} == {("svc", "onevision-candidates")}
    assert not [g for g in plan if g.user == "ro"]
    with pytest.raises(PromotionError, match="candidates_model is empty"):
        team_plan("onevision", "onevision", service="svc", reviewers=["alice"], readers=[])
    with pytest.raises(PromotionError, match="must not be a reviewer"):
        team_plan("onevision", "c", service="alice", reviewers=["alice"], readers=[])


class FakeAdmin:
    """The MLflow auth app's admin client and registry, in memory (default permission READ)."""

    def __init__(self):
        self.users: dict[str, str] = {}
        self.grants: dict[tuple[str, str], str] = {}
        self.models: set[str] = set()
        self.calls: list[str] = []

    def get_user(self, user):
        if user not in self.users:
            raise MlflowException("no user", error_code="RESOURCE_DOES_NOT_EXIST")

    def create_user(self, user, password):
        self.calls.append(f"create_user {user}")
        self.users[user] = password

    def get_user_permission(self, user, kind, model):
        return type("P", (), {"permission": self.grants.get((user, model), "READ")})()

    def grant_user_permission(self, user, kind, model, permission):
        self.calls.append(f"grant {user} {model} {permission}")
        self.grants[(user, model)] = permission

    def get_registered_model(self, name):
        if name not in self.models:
            raise MlflowException("no model", error_code="RESOURCE_DOES_NOT_EXIST")

    def create_registered_model(self, name, description=""):
        self.calls.append(f"create_model {name}")
        self.models.add(name)


@pytest.fixture
def fake_server(monkeypatch):
    fake = FakeAdmin()
    monkeypatch.setattr(access, "_admin_client", lambda uri: fake)
    monkeypatch.setattr(access, "server_identity", lambda uri: "admin")
    monkeypatch.setattr("mlflow.MlflowClient", lambda **kw: fake)
    return fake


def test_access_setup_is_idempotent_and_never_prints_a_password(fake_server):
    env = {access.password_env(u): f"{u}-first-password" for u in ("svc", "alice", "ro")}
    kwargs = dict(service="svc", reviewers=["alice"], readers=["ro"], environ=env)
    first = setup_access("http://127.0.0.1:5000", served="onevision", candidates="onevision-candidates", apply=True, **kwargs)
    assert {r.state for r in first} >= {"created", "granted"}
    calls = list(fake_server.calls)
    again = setup_access("http://127.0.0.1:5000", served="onevision", candidates="onevision-candidates", apply=True, **kwargs)
    assert fake_server.calls == calls, "a second setup changed something"
    assert {r.state for r in again} == {"ok"}
    check = setup_access("http://127.0.0.1:5000", served="onevision", candidates="onevision-candidates", apply=False, **kwargs)
    assert {r.state for r in check} == {"ok"}
    assert not any("first-password" in f"{r.subject} {r.detail}" for r in first + again)
    assert fake_server.grants == {("svc", "onevision-candidates"): "MANAGE", ("alice", "onevision"): "MANAGE",
                                  ("alice", "onevision-candidates"): "MANAGE"}


def test_access_check_finds_a_non_reviewer_who_may_write_the_served_model(fake_server):
    env = {access.password_env(u): f"{u}-first-password" for u in ("svc", "alice")}
    setup_access("http://x:1", served="onevision", candidates="c", service="svc", reviewers=["alice"], readers=[], apply=True, environ=env)
    fake_server.grants[("svc", "onevision")] = "EDIT"
    rows = setup_access("http://x:1", served="onevision", candidates="c", service="svc", reviewers=["alice"], readers=[], apply=False, environ=env)
    assert [r.subject for r in rows if r.state == "wrong"] == ["svc on onevision"]


def test_a_new_account_without_its_password_is_a_clear_error(fake_server):
    with pytest.raises(PromotionError, match=r"\$ONEVISION_PASSWORD_ML_REVIEWER"):
        setup_access("http://x:1", served="onevision", candidates="c", service="svc", reviewers=["ml-reviewer"], readers=[], apply=True,
                     environ={"ONEVISION_PASSWORD_SVC": "long-enough-password"})


def test_access_on_the_embedded_store_says_there_are_no_accounts(project):
    result = runner.invoke(app, ["access", "check", "--service", "svc", "--root", str(project)], env={"MLFLOW_TRACKING_URI": ""})
    assert result.exit_code == 2 and "there are no accounts" in result.output


# --------------------------------------------------------------------------- notifications


def test_a_notification_is_signed_retried_and_carries_the_command_and_links(monkeypatch):
    cfg = Config()
    with receiver(fail_first=1) as hooks:
        monkeypatch.setenv(notify.WEBHOOKS_ENV, hooks.url)
        monkeypatch.setenv(cfg.registry.notify.secret_env, hooks.key)
        results = notify.notify(cfg, "awaiting-approval", model="onevision-candidates", version="7", served_model="onevision",
                                tracking_uri="http://alice:pw@127.0.0.1:5000", run_id="abc",
                                tags={"gate.latency_p95.value": "12"}, failed=[], attached=["gate_report.md", "candidate.html"])
    assert results[0]["ok"] and results[0]["attempts"] == 2 and hooks.token not in json.dumps(results)
    (hook,) = hooks.received
    body = json.loads(hook["body"])
    assert body["decide"]["approve"] == 'onevision approve 7 --reason "..."' and body["verdict"] == "passed"
    assert body["links"]["gate_report"] == "runs:/abc/gate_report/gate_report.md" and body["links"]["photos"].endswith("candidate.html")
    assert body["links"]["mlflow_version"] == "http://127.0.0.1:5000/#/models/onevision-candidates/versions/7"  # no credentials
    assert notify.verify(hooks.key, hook["headers"][notify.TIMESTAMP_HEADER.lower()], hook["body"].encode(), hook["headers"][notify.SIGNATURE_HEADER.lower()])
    assert not notify.verify("wrong-key", hook["headers"][notify.TIMESTAMP_HEADER.lower()], hook["body"].encode(), hook["headers"][notify.SIGNATURE_HEADER.lower()])


def test_a_failed_delivery_is_reported_and_never_raises(monkeypatch, caplog):
    monkeypatch.setenv(notify.WEBHOOKS_ENV, "http://127.0.0.1:9/hooks/canary-token-123456")
    sleeps = []
    monkeypatch.setattr(notify.time, "sleep", sleeps.append)
    (result,) = notify.notify(Config(), "rolled-back", model="onevision", version="2", served_model="onevision",
                              record={"by": "alice", "reason": "bad", "rolled_back": "3"})
    assert not result["ok"] and result["attempts"] == 3 and sleeps == [0.5, 1.0]
    assert "canary-token" not in caplog.text and "failed after 3 attempt(s)" in caplog.text


def test_models_says_the_embedded_registry_is_one_person(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["models", "--root", str(project)])
    assert result.exit_code == 0, result.output
    assert "embedded registry (no server, no authentication): one-person setup" in result.output
