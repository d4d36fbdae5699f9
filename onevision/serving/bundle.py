"""The deployable bundle: a directory of a trained project's artifacts plus a loader that builds a Retriever.

A bundle keeps the artifacts at the same relative paths as in the project
root (``models/encoder/``, ``data/sids/sid_table.parquet``, ...), so the
loader that reads a project root reads a bundle unchanged, and serving from a
local project (``onevision search --project``) and from the registry run the
same code. ``bundle.json`` records which loader to call and what a query must
look like (:class:`~onevision.serving.queries.QuerySpec`)::

    build_bundle(cfg, root, dest)            # copy artifacts + write bundle.json
    retriever = load_retriever(dest)         # -> anything with retrieve(images, user_ids, k)

Two retrievers are bundled (``serving.retriever``):

* ``onevision``: the generative model (encoder + SID table/trie + the
  ``serving.stage`` checkpoint; the VRQ tokenizer rides along when present),
  built by ``OneVisionRetriever.load``. When stage calibrate_pruning has chosen
  a pruning config (``models/pruning/pruning.json``) it is bundled, recorded in
  ``bundle.json`` (key ``pruning``) and the served model decodes with it; the
  bundle then serves what the ``onevision_pruned`` evaluation row measured.
* ``knn``: exact nearest neighbours of the query embedding among the aligned
  item embeddings: the image-only floor, and a deployable that needs no
  generative training (tests, first deployments).
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onevision import atomic, paths
from onevision.config import Config
from onevision.retrieval import RetrievalResult, exact_knn
from onevision.serving.queries import QuerySpec

MANIFEST = "bundle.json"
FORMAT = 1

ENCODER_DIR = paths.MODELS / "encoder"
ITEM_EMBEDDINGS = paths.DATA / "embeddings" / "items.npz"
VRQ_DIR = paths.MODELS / "vrq"
SID_TABLE = paths.DATA / "sids" / "sid_table.parquet"
PRUNING_DIR = paths.PRUNING  # stage calibrate_pruning: the chosen operating point
GENERATIVE_DIR = paths.MODELS / "generative"
# Metrics travel with the model so a registry version shows what it was gated on.
METRICS_FILES = tuple(paths.metrics_file(s) for s in ("validate", "vrq", "evaluate", "calibrate_pruning", "pruning"))


@dataclass(frozen=True)
class BundleLayout:
    """Relative paths a retriever kind needs (required) and carries when present (optional)."""

    loader: str  # "module:function" (directory, manifest) -> Retriever
    required: tuple[Path, ...]
    optional: tuple[Path, ...] = ()


def bundle_layout(kind: str, stage: str = "dpo") -> BundleLayout:
    if kind == "onevision":
        return BundleLayout(
            "onevision.serving.bundle:load_onevision",
            required=(ENCODER_DIR, SID_TABLE, GENERATIVE_DIR / stage),
            optional=(VRQ_DIR, PRUNING_DIR, *METRICS_FILES),
        )
    if kind == "knn":
        return BundleLayout("onevision.serving.bundle:load_knn", required=(ENCODER_DIR, ITEM_EMBEDDINGS), optional=(SID_TABLE, *METRICS_FILES))
    raise ValueError(f"unknown retriever kind {kind!r}; use onevision or knn")


def query_spec(cfg: Config) -> QuerySpec:
    s = cfg.serving
    return QuerySpec(cfg.data.image_size, cfg.data.image_channels, s.max_image_bytes, s.default_k, s.max_k)


def manifest_for(cfg: Config, kind: str | None = None) -> dict[str, Any]:
    """What ``bundle.json`` holds for a project with config ``cfg``."""
    kind = kind or cfg.serving.retriever
    layout = bundle_layout(kind, cfg.serving.stage)
    return {
        "format": FORMAT,
        "retriever": kind,
        "loader": layout.loader,
        "stage": cfg.serving.stage,
        "decode": cfg.generative.decode.model_dump(mode="json"),
        "query": query_spec(cfg).to_dict(),
        "profile": cfg.profile,
        "seed": cfg.seed,
    }


def build_bundle(cfg: Config, root: str | Path, dest: str | Path, kind: str | None = None) -> Path:
    """Copy the artifacts of project ``root`` that ``kind`` needs into ``dest`` and write ``bundle.json``."""
    root, dest = Path(root), Path(dest)
    manifest = manifest_for(cfg, kind)
    layout = bundle_layout(manifest["retriever"], manifest["stage"])
    missing = [str(p) for p in layout.required if not (root / p).exists()]
    if missing:
        raise FileNotFoundError(f"cannot bundle a '{manifest['retriever']}' model from {root}: missing {', '.join(missing)} (run the stages that write them)")
    files = []
    for rel in (*layout.required, *layout.optional):
        src = root / rel
        if not src.exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.tmp"))
        else:
            shutil.copy2(src, target)
        files.append(str(rel))
    manifest["files"] = files
    if manifest["retriever"] == "onevision":
        manifest["pruning"] = _bundled_pruning(dest)
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic.write_json(dest / MANIFEST, manifest)
    return dest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a OneVision model bundle")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"bundle {directory} has format {manifest.get('format')}, this code reads {FORMAT}")
    return manifest


def load_retriever(directory: str | Path, manifest: dict[str, Any] | None = None):
    """Build the bundle's Retriever with the loader its manifest names."""
    manifest = manifest or read_manifest(directory)
    module, func = manifest["loader"].split(":")
    return getattr(importlib.import_module(module), func)(Path(directory), manifest)


# --------------------------------------------------------------------------- loaders


def _bundled_pruning(directory: Path) -> dict[str, Any] | None:
    """The calibrated pruning config under ``directory`` as a dict (None: decode without pruning)."""
    # lazy: a bundle loads its retriever's libraries (pandas, torch) when loaded; the gates read its manifest and SID table without them
    from onevision.generative.pruning import load_pruning

    pruning = load_pruning(directory)
    return pruning.to_dict() if pruning is not None else None


def load_onevision(directory: Path, manifest: dict[str, Any]):
    """The generative retriever from a bundle or a project root, decoding with the bundled pruning config if any."""
    # lazy: a bundle loads its retriever's libraries (pandas, torch) when loaded; the gates read its manifest and SID table without them
    from onevision.generative.pruning import load_pruning
    from onevision.generative.retriever import OneVisionRetriever

    decode = manifest.get("decode", {})
    return OneVisionRetriever.load(
        directory, manifest.get("stage", "dpo"), beam_width=decode.get("beam_width"), batch_size=decode.get("batch_size"), name="onevision",
        pruning=load_pruning(directory),
    )


def load_knn(directory: Path, manifest: dict[str, Any]):
    # lazy: a bundle loads its retriever's libraries (pandas, torch) when loaded; the gates read its manifest and SID table without them
    from onevision.encoder.api import ImageEncoder

    with np.load(directory / ITEM_EMBEDDINGS) as data:
        item_ids, item_emb = data["item_ids"].astype(np.int64), data["embeddings"].astype(np.float32)
    return ExactKNNRetriever(ImageEncoder.load(directory / ENCODER_DIR), item_ids, item_emb)


class ExactKNNRetriever:
    """Top-k items by inner product of the query embedding with the item embeddings (exact, numpy)."""

    def __init__(self, encoder, item_ids: np.ndarray, item_emb: np.ndarray, name: str = "knn"):
        self.encoder = encoder
        self.item_ids = np.asarray(item_ids, np.int64)  # (N,)
        self.item_emb = np.ascontiguousarray(item_emb, np.float32)  # (N, D)
        self.name = name

    def retrieve(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> RetrievalResult:
        t0 = time.perf_counter()
        query = self.encoder.embed(images)  # (Q, D)
        t1 = time.perf_counter()
        top, sims = exact_knn(query, self.item_emb, k)  # (Q, kk) best first
        kk = top.shape[1]
        ids = np.full((len(query), k), -1, np.int64)
        scores = np.full((len(query), k), -np.inf, np.float32)
        ids[:, :kk] = self.item_ids[top]
        scores[:, :kk] = sims
        return RetrievalResult(ids, scores, {"encode": t1 - t0, "search": time.perf_counter() - t1})
