"""The one deployable model: an MLflow pyfunc wrapping a bundle (onevision.serving.bundle).

Request (a table; JSON ``dataframe_records``/``dataframe_split`` over REST)::

    image    binary  PNG/JPEG bytes (base64 string in JSON), any size: normalised as at import
                     (EXIF orientation, centre square, data.image_size, data.image_channels)
    user_id  long    optional column; -1 or unknown id: anonymous
    params   {"k": 10}  results per query, 1..serving.max_k

Response: one row per query, ``item_ids`` (list of long, best first) and
``scores`` (list of double, higher is better); fewer than k when the catalog
is smaller. A bad request raises an MlflowException with
INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400 and
a short message: the row, what is wrong and what to send instead (never a
dump of the request: see :class:`BadRequest`).

The model is logged "from code" (``model_code.py``), not pickled: loading it
runs this module's current code over the bundled artifacts. A generative
bundle decodes with its calibrated pruning config (``models/pruning/``, see
onevision.serving.bundle) when it has one.
"""

from __future__ import annotations

import base64
import logging
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from onevision.data.images import encode_png
from onevision.registry.model_registry import CHAMPION, ModelRegistry, verify_champion
from onevision.serving.bundle import load_retriever, read_manifest
from onevision.serving.queries import InvalidQuery, QuerySpec, parse_k, parse_queries

BUNDLE_ARTIFACT = "bundle"
MODEL_CODE = Path(__file__).with_name("model_code.py")


class BadRequest(MlflowException):
    """A refused request (HTTP 400) whose message stays ours.

    MLflow's scoring server (``mlflow.pyfunc.scoring_server.invocations``)
    rewrites the message of any MlflowException that ``predict`` raises to
    ``Failed to predict data '<the whole request table>'. \\nError: <message>``:
    with base64 photos that is a screenful of echo around one line of reason.
    Setting ``message`` to that form keeps the original message.
    """

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        own = getattr(self, "_message", None)
        if own is not None and value.startswith("Failed to predict data") and value.endswith(own):
            return
        self._message = value


def to_mlflow_error(exc: InvalidQuery) -> BadRequest:
    """The error a refused request raises: INVALID_PARAMETER_VALUE (HTTP 400), ``bad request: <row: why; what to do>``."""

    return BadRequest(f"bad request: {exc}", error_code=INVALID_PARAMETER_VALUE)


class OneVisionModel(mlflow.pyfunc.PythonModel):
    """Query image (+ user) -> top-k catalog items, over whatever Retriever the bundle builds."""

    def __init__(self) -> None:
        self.retriever = None
        self.spec = QuerySpec()
        self.manifest: dict[str, Any] = {}

    @classmethod
    def from_directory(cls, directory: str | Path, manifest: dict[str, Any] | None = None) -> OneVisionModel:
        """Load a bundle (or a project root with an explicit manifest) without MLflow."""
        model = cls()
        model._load(Path(directory), manifest)
        return model

    def _load(self, directory: Path, manifest: dict[str, Any] | None = None) -> None:
        self.manifest = manifest or read_manifest(directory)
        self.spec = QuerySpec.from_dict(self.manifest.get("query", {}))
        self.retriever = load_retriever(directory, self.manifest)

    def load_context(self, context) -> None:
        bundle = Path(context.artifacts[BUNDLE_ARTIFACT])
        check_served_champion(bundle)
        self._load(bundle)

    def search(self, frame: pd.DataFrame, k: int) -> pd.DataFrame:
        """Validated request table -> result table (raises InvalidQuery on bad input)."""
        images, user_ids = parse_queries(frame, self.spec)
        result = self.retriever.retrieve(images, user_ids, k)
        rows = []
        for ids, scores in zip(result.item_ids, result.scores, strict=True):
            keep = ids >= 0  # -1 pads when the catalog has fewer than k items
            rows.append({"item_ids": ids[keep].tolist(), "scores": scores[keep].astype(np.float64).tolist()})
        return pd.DataFrame(rows, columns=["item_ids", "scores"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            return self.search(pd.DataFrame(model_input), parse_k(params, self.spec))
        except InvalidQuery as exc:
            raise to_mlflow_error(exc) from None


def check_served_champion(bundle: Path) -> None:
    """Refuse (or warn, ONEVISION_UNAPPROVED_CHAMPION=warn) to serve a registered version that holds the
    ``champion`` alias without a matching approval record: `mlflow models serve -m models:/NAME@champion`
    after someone set the alias in the MLflow UI. Needs the registry (MLFLOW_TRACKING_URI); without one, or
    for a model that is not the champion, nothing is checked."""

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlmodel = next((d / "MLmodel" for d in bundle.parents if (d / "MLmodel").is_file()), None)
    if not uri or mlmodel is None:
        return
    run_id = (yaml.safe_load(mlmodel.read_text()) or {}).get("run_id")
    if not run_id:
        return

    client = MlflowClient(uri)
    for found in client.search_model_versions(f"run_id='{run_id}'"):
        mv = client.get_model_version(found.name, found.version)  # search results carry no aliases
        if CHAMPION not in (mv.aliases or []):
            continue
        check = verify_champion(ModelRegistry(mv.name, uri))
        if check.approved or check.version != str(mv.version):
            continue
        message = (f"refusing to serve {mv.name} v{mv.version} as champion: {check.reason}. `onevision rollback` or "
                   "`onevision approve VERSION` restores an audited champion (ONEVISION_UNAPPROVED_CHAMPION=warn serves it with a warning)")
        if os.environ.get("ONEVISION_UNAPPROVED_CHAMPION", "refuse") == "warn":
            logging.getLogger(__name__).warning("%s", message.replace("refusing to serve", "serving"))
        else:
            raise RuntimeError(message)


def signature(spec: QuerySpec):
    inputs = Schema([ColSpec("binary", "image"), ColSpec("long", "user_id", required=False)])
    outputs = Schema([ColSpec(Array("long"), "item_ids"), ColSpec(Array("double"), "scores")])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", "long", spec.default_k)]))


def example_image(spec: QuerySpec) -> bytes:
    """A valid query image of the model's shape (a soft gradient), PNG-encoded."""
    ramp = np.linspace(32, 224, spec.image_size, dtype=np.float32)
    gray = ((ramp[:, None] + ramp[None, :]) / 2).astype(np.uint8)  # (S, S)
    return encode_png(gray if spec.image_channels == 1 else np.repeat(gray[:, :, None], 3, axis=2))


def input_example(spec: QuerySpec) -> tuple[pd.DataFrame, dict[str, int]]:
    return pd.DataFrame({"image": [example_image(spec)], "user_id": [-1]}), {"k": spec.default_k}


def rest_payload(images: list[bytes], user_ids: list[int] | None = None, k: int | None = None) -> dict[str, Any]:
    """The JSON body of a POST /invocations for these images (base64, as the binary column expects)."""
    records = [{"image": base64.b64encode(img).decode("ascii")} for img in images]
    if user_ids is not None:
        for record, user in zip(records, user_ids, strict=True):
            record["user_id"] = int(user)
    payload: dict[str, Any] = {"dataframe_records": records}
    if k is not None:
        payload["params"] = {"k": int(k)}
    return payload


def pip_requirements() -> list[str]:
    """Pinned to this environment (listing them skips MLflow's ~5 s inference). The serving environment
    needs the onevision package itself too (installed, as in infra/Dockerfile; it is not on PyPI)."""

    names = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pillow", "pydantic", "pyyaml")
    return [f"{name}=={version(name).split('+')[0]}" for name in names]


def _model_kwargs(bundle_dir: str | Path) -> dict[str, Any]:
    manifest = read_manifest(bundle_dir)
    spec = QuerySpec.from_dict(manifest.get("query", {}))
    return {
        "python_model": str(MODEL_CODE),
        "artifacts": {BUNDLE_ARTIFACT: str(bundle_dir)},
        "signature": signature(spec),
        "input_example": input_example(spec),
        "pip_requirements": pip_requirements(),
        # the pruning config the served model decodes with (None: exact beam search), visible in the registry
        "metadata": {"query": spec.to_dict(), "retriever": manifest["retriever"], "pruning": manifest.get("pruning")},
    }


def log_bundle_model(bundle_dir: str | Path, name: str = "model", registered_model_name: str | None = None):
    """Log the bundle as a pyfunc model in the active MLflow run; returns the ModelInfo."""
    return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name, **_model_kwargs(bundle_dir))


def save_bundle_model(bundle_dir: str | Path, path: str | Path) -> Path:
    """Save the same pyfunc model to a local folder (``mlflow models serve -m PATH``, benchmarks)."""
    mlflow.pyfunc.save_model(path=str(path), **_model_kwargs(bundle_dir))
    return Path(path)
