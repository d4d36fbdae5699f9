"""Who the MLflow server says you are, what it refuses you, and the accounts and permissions a team needs.

On an MLflow server started with ``--app-name basic-auth`` every request carries the caller's
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or ``~/.mlflow/credentials``) and the server
answers 401 to a wrong password and 403 to a missing permission. Promotion leans on that:

* the reviewer is the account the server authenticated (:func:`server_identity`), never a typed or
  environment name;
* the permission layout (:func:`team_plan`) lets the service account write candidates only
  (``registry.candidates_model``) and only reviewers write the served model (``registry.model_name``,
  alias ``champion``), so the server itself refuses anyone else;
* a refusal becomes one line that says who you are, what is missing and what to do (:func:`explain_denied`).

Without a server (the embedded default: a local SQLite/file store) there is no authentication to lean on:
:func:`server_identity` returns None and promotion keeps its one-person checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from onevision.registry.model_registry import PromotionError

CURRENT_USER = "/api/2.0/mlflow/users/current"
REGISTERED_MODEL = "registered_model"
READ, EDIT, MANAGE = "READ", "EDIT", "MANAGE"
_RANK = {"NO_PERMISSIONS": 0, READ: 1, "USE": 2, EDIT: 3, MANAGE: 4}


class AccessDenied(PromotionError):
    """The MLflow server refused the caller (401: not authenticated; 403: a permission is missing)."""


def is_server(uri: str | None) -> bool:
    return bool(uri) and uri.split(":", 1)[0] in ("http", "https")


def _host_creds(uri: str):
    # lazy: mlflow's REST helpers only on a server
    from mlflow.utils.credentials import get_default_host_creds

    return get_default_host_creds(uri)


def server_identity(uri: str | None) -> str | None:
    """The username the MLflow server at ``uri`` authenticated for this process's credentials.

    None when ``uri`` is not a server, or the server runs without its authentication app (then nobody is
    authenticated and promotion falls back to the embedded checks). A wrong password or an unknown account
    raises :class:`AccessDenied`.
    """
    if not is_server(uri):
        return None
    # lazy: mlflow's REST helpers only on a server
    from mlflow.utils.rest_utils import http_request

    creds = _host_creds(uri)
    response = http_request(creds, CURRENT_USER, "GET", max_retries=2, backoff_factor=1, timeout=30)
    if response.status_code == 404:
        return None  # no authentication app on this server
    if response.status_code == 401:
        who = creds.username or "(no MLFLOW_TRACKING_USERNAME)"
        raise AccessDenied(f"the MLflow server {uri} did not authenticate '{who}': set MLFLOW_TRACKING_USERNAME and "
                           "MLFLOW_TRACKING_PASSWORD to your own account (ask your MLflow admin for one: `onevision access`)")
    if response.status_code != 200:
        raise AccessDenied(f"the MLflow server {uri} answered HTTP {response.status_code} to 'who am I' ({CURRENT_USER})")
    user = (response.json().get("user") or {}).get("username")
    return user or None


def is_denied(exc: BaseException) -> str | None:
    """'403' or '401' when ``exc`` is the MLflow server refusing the caller, else None (also through a wrapped message)."""
    code = getattr(exc, "error_code", "")
    text = str(exc)
    if code == "PERMISSION_DENIED" or "error code 403" in text:
        return "403"
    if code == "UNAUTHENTICATED" or "error code 401" in text:
        return "401"
    return None


def explain_denied(status: str, *, user: str | None, action: str, model: str, needed: str, remedy: str) -> str:
    """One line: who you are, what the server refused, the missing permission and what to do next."""
    who = f"'{user}'" if user else "this caller (no MLFLOW_TRACKING_USERNAME)"
    if status == "401":
        return (f"the MLflow server did not authenticate {who} ({action} refused, HTTP 401): check MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD")
    return (f"the MLflow server refused {action} to {who} (HTTP 403): {who} lacks {needed} on registered model "
            f"'{model}'. {remedy}")


@contextmanager
def denied_as_error(*, user: str | None, action: str, model: str, needed: str, remedy: str) -> Iterator[None]:
    """Turn the server's 401/403 inside the block into :class:`AccessDenied` with :func:`explain_denied`'s line."""
    try:
        yield
    except AccessDenied:
        raise
    except Exception as exc:
        status = is_denied(exc)
        if status is None:
            raise
        raise AccessDenied(explain_denied(status, user=user, action=action, model=model, needed=needed, remedy=remedy)) from None


# --------------------------------------------------------------------------- team accounts and permissions


@dataclass(frozen=True)
class Grant:
    user: str
    model: str
    permission: str
    why: str


def team_plan(served: str, candidates: str, *, service: str, reviewers: list[str], readers: list[str]) -> list[Grant]:
    """The grants that express the workflow (everyone authenticated reads by the server's default_permission READ):

    * the service account (retrain flows, workers) MANAGEs the candidates model: registers versions, tags them,
      moves and removes ``challenger``; it only reads the served model;
    * reviewers MANAGE the served model (copy a version in, set and clear champion / previous-champion, the
      audit log) and the candidates model (a decided candidate's status, removing ``challenger``);
    * read-only users get no grant: they read, and every write answers 403.
    """
    if served == candidates:
        raise PromotionError("registry.candidates_model is empty (or equals registry.model_name): the service account "
                             "could then set champion. Set registry.candidates_model (e.g. "
                             f"'{served}-candidates') before setting up access")
    if service in reviewers:
        raise PromotionError(f"the service account '{service}' must not be a reviewer (registry.reviewers): "
                             "a retrain could then approve its own candidate")
    grants = [Grant(service, candidates, MANAGE, "registers candidates, tags them, moves challenger")]
    for reviewer in reviewers:
        grants.append(Grant(reviewer, served, MANAGE, "approves and rolls back: copies versions in, sets champion"))
        grants.append(Grant(reviewer, candidates, MANAGE, "marks decided candidates, removes challenger"))
    return grants


@dataclass
class AccessRow:
    subject: str
    state: str  # ok | created | granted | missing | wrong
    detail: str


def password_env(user: str) -> str:
    """Where `onevision access setup` reads a new account's first password: ONEVISION_PASSWORD_<USER>."""
    return "ONEVISION_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in user).upper()


def _admin_client(uri: str):
    try:
        # lazy: mlflow's auth client only for `onevision access`
        from mlflow.server.auth.client import AuthServiceClient
    except ImportError as exc:
        raise PromotionError(f"MLflow's authentication client is not installed ({exc}): pip install -e '.[stack]' "
                             "(it brings mlflow[auth])") from None

    return AuthServiceClient(uri)


def _user_exists(client, user: str) -> bool:
    try:
        client.get_user(user)
        return True
    except Exception as exc:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST, or the caller is no admin (re-raised)
        if is_denied(exc):
            raise
        return False


def _permission(client, user: str, model: str) -> str:
    """The user's effective permission on the model, as the server resolves it for a real request."""
    return client.get_user_permission(user, REGISTERED_MODEL, model).permission


def setup_access(uri: str, *, served: str, candidates: str, service: str, reviewers: list[str], readers: list[str],
                 apply: bool, environ: dict[str, str] | None = None) -> list[AccessRow]:
    """Check (``apply=False``) or create (``apply=True``) the team's accounts, both registered models and the grants
    of :func:`team_plan`, as the admin whose credentials this process holds. Idempotent: what exists and is right is
    left alone (passwords of existing accounts are never changed); a new account's password comes from
    ``$ONEVISION_PASSWORD_<USER>`` and is never printed."""
    env = os.environ if environ is None else environ
    if not is_server(uri):
        raise PromotionError(f"access is managed on an MLflow server with authentication; the tracking URI is {uri!r} "
                             "(embedded: there are no accounts). Set MLFLOW_TRACKING_URI to the server")
    plan = team_plan(served, candidates, service=service, reviewers=reviewers, readers=readers)
    # lazy: mlflow only for `onevision access`
    from mlflow import MlflowClient

    client, registry = _admin_client(uri), MlflowClient(tracking_uri=uri, registry_uri=uri)
    rows: list[AccessRow] = []
    admin = server_identity(uri)
    if admin is None:
        raise PromotionError(f"the MLflow server {uri} runs without authentication (`mlflow server --app-name basic-auth`, "
                             "infra/README.md): there are no accounts to set up")
    remedy = "run it with an admin's MLFLOW_TRACKING_USERNAME/PASSWORD"
    with denied_as_error(user=admin, action="managing accounts", model=served, needed="admin rights", remedy=remedy):
        for user in dict.fromkeys([service, *reviewers, *readers]):
            if _user_exists(client, user):
                rows.append(AccessRow(f"user {user}", "ok", "exists"))
            elif not apply:
                rows.append(AccessRow(f"user {user}", "missing", "no such account"))
            else:
                password = env.get(password_env(user), "")
                if len(password) < 12:
                    raise PromotionError(f"account '{user}' does not exist yet: put its first password (12+ characters) in "
                                         f"${password_env(user)} and run again (it is never printed or stored elsewhere)")
                client.create_user(user, password)
                rows.append(AccessRow(f"user {user}", "created", f"password from ${password_env(user)}"))
        for model in (candidates, served):
            try:
                registry.get_registered_model(model)
                rows.append(AccessRow(f"model {model}", "ok", "exists"))
            except Exception as exc:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST
                if is_denied(exc):
                    raise
                if apply:
                    registry.create_registered_model(model, description="OneVision: promotion by aliases (docs/reviewers.md)")
                    rows.append(AccessRow(f"model {model}", "created", "owned by the admin"))
                else:
                    rows.append(AccessRow(f"model {model}", "missing", "not registered yet"))
        for g in plan:
            subject = f"{g.user} on {g.model}"
            if not _user_exists(client, g.user):
                rows.append(AccessRow(subject, "missing", f"wants {g.permission}: no such account"))
                continue
            have = _permission(client, g.user, g.model)
            if have == g.permission:
                rows.append(AccessRow(subject, "ok", f"{have}: {g.why}"))
            elif apply:
                client.grant_user_permission(g.user, REGISTERED_MODEL, g.model, g.permission)
                rows.append(AccessRow(subject, "granted", f"{g.permission} (was {have}): {g.why}"))
            else:
                rows.append(AccessRow(subject, "wrong" if _RANK.get(have, 0) else "missing", f"has {have}, wants {g.permission}: {g.why}"))
        planned = {(g.user, g.model) for g in plan}
        for user in dict.fromkeys([service, *readers]):
            if _user_exists(client, user) and (user, served) not in planned:
                have = _permission(client, user, served)
                state = "ok" if _RANK.get(have, 0) <= _RANK[READ] else "wrong"
                rows.append(AccessRow(f"{user} on {served}", state, f"{have}: may not set champion"
                                      + ("" if state == "ok" else " — revoke it (only reviewers write the served model)")))
    return rows
