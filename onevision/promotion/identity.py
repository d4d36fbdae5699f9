"""Who decides a promotion: the account an MLflow server with authentication verified, else (embedded, one
person) ``$ONEVISION_REVIEWER`` or the login; what a refused caller is told to do."""

from __future__ import annotations

import getpass
import os

from onevision.registry.access import server_identity
from onevision.registry.model_registry import PromotionError

REVIEWER_ENV = "ONEVISION_REVIEWER"
SERVER_IDENTITY = "mlflow-server"  # the audit record's `identity` when the MLflow server authenticated the reviewer
# What a refused reviewer action (HTTP 403) tells the caller to do next.
REVIEWER_REMEDY = ("Only reviewers may change the served model: if you are one, ask an MLflow admin to run "
                   "`onevision access setup` with you in registry.reviewers; otherwise ask a reviewer to decide")
SERVICE_REMEDY = "The service account writes candidates only: an MLflow admin runs `onevision access setup` (docs/reviewers.md)"


class ReviewerNotAllowed(PromotionError):
    """The named reviewer is not in registry.reviewers, or is not who is deciding."""


def current_identity() -> tuple[str, str]:
    """Who runs this command, and how we know: ``$ONEVISION_REVIEWER`` (set in the reviewer's own shell profile or
    by the SSO wrapper of a shared host), else the operating-system login."""
    name = os.environ.get(REVIEWER_ENV, "").strip()
    if name:
        return name, f"${REVIEWER_ENV}"
    return getpass.getuser(), "login"


def reviewer_identity(claimed: str | None = None, authenticated: str | None = None) -> tuple[str, str]:
    """The deciding reviewer's name and its source. A name given on the command line must be the caller's own:
    a free-text argument alone never makes anyone a reviewer. ``authenticated`` (the account an MLflow server with
    authentication verified) wins over everything: ``$ONEVISION_REVIEWER`` and the login are then ignored."""
    name, source = (authenticated, SERVER_IDENTITY) if authenticated else current_identity()
    claimed = (claimed or "").strip()
    if claimed and claimed != name and source == SERVER_IDENTITY:
        raise ReviewerNotAllowed(
            f"the MLflow server authenticated you as '{name}', but --reviewer/--by says '{claimed}': a reviewer decides only "
            f"as themselves. Drop the option, or sign in as {claimed} (their MLFLOW_TRACKING_USERNAME/PASSWORD)")
    if claimed and claimed != name:
        raise ReviewerNotAllowed(
            f"you are '{name}' ({'from ' + source if source != 'login' else 'your login'}), but --reviewer says '{claimed}': "
            f"a reviewer decides only as themselves. Drop --reviewer, or run it in {claimed}'s own shell "
            f"(with {REVIEWER_ENV}={claimed} set there)")
    return name, source


def check_authenticated(uri: str, name: str) -> bool:
    """On a server with authentication, the deciding name must be the account the server authenticated (True
    then); False where nothing authenticates (embedded, or a server without its authentication app)."""
    authenticated = server_identity(uri)
    if authenticated and authenticated != name:
        raise ReviewerNotAllowed(f"the MLflow server authenticated this caller as '{authenticated}', not '{name}': a decision "
                                 f"is recorded under the authenticated account only (decide with `onevision approve` as {name})")
    return bool(authenticated)
