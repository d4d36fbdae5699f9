"""A project, resolved once: its root, its effective config, its MLflow tracking URI and model registry.

Every entry point (a command of the command line, a Prefect flow) turns the project root it was given into a
:class:`Project` with :meth:`Project.open`, the one place that reads ``params.yaml`` and resolves the tracking
URI, and hands it down: promotion, drift, serving and evaluation take the project instead of turning
``root`` into a config, a URI and a registry again at each step. Flows keep ``root: str`` as their parameter
(flow parameters are JSON) and open the project inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from onevision.config import PARAMS_FILE, Config, load_config
from onevision.registry.model_registry import ModelRegistry
from onevision.tracking import Tracker, apply_retry_environment, retry_environment, tracking_uri


def read_config(root: str | Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The effective config of project ``root``: its params.yaml, the active profile and ``--set`` overrides."""
    return load_config(Path(root) / PARAMS_FILE, profile=profile, overrides=list(overrides or ()))


@dataclass(frozen=True)
class Project:
    """A project root with its config and tracking URI, resolved once (:meth:`open`)."""

    root: Path  # absolute
    cfg: Config
    tracking_uri: str  # resolved: tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else mlflow.db in root

    @classmethod
    def open(cls, root: str | Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Project:
        """Load the project at ``root`` (ConfigError when its params.yaml is missing or invalid)."""
        root = Path(root).resolve()
        cfg = read_config(root, profile, overrides)
        return cls(root, cfg, tracking_uri(root, cfg.tracking.tracking_uri))

    def registry(self) -> ModelRegistry:
        """The registered model ``registry.model_name`` in this project's registry (opened once, then reused)."""
        return self._registry

    @cached_property
    def _registry(self) -> ModelRegistry:
        apply_retry_environment(retry_environment(self.cfg))
        return ModelRegistry(self.cfg.registry.model_name, self.tracking_uri)

    def candidates(self) -> ModelRegistry:
        """The registered model candidates are registered in: ``registry.candidates_model`` (a server with
        authentication, where only reviewers may write the served model), else the served model itself."""
        return self._registry if self.cfg.registry.candidates == self.cfg.registry.model_name else self._candidates

    @cached_property
    def _candidates(self) -> ModelRegistry:
        apply_retry_environment(retry_environment(self.cfg))
        return ModelRegistry(self.cfg.registry.candidates, self.tracking_uri)

    def tracker(self, experiment: str | None = None) -> Tracker:
        """A tracker of ``experiment`` (default ``tracking.experiment``) in this project's tracking store."""
        return Tracker(self.root, experiment or self.cfg.tracking.experiment, self.tracking_uri, retry_environment(self.cfg))

    def path(self, relative: str | Path) -> Path:
        """``relative`` (``paths.REPORTS / "x.md"``) inside the project root."""
        return self.root / relative
