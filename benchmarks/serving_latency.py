"""Serving latency of the deployable pyfunc model: in-process and through the REST scoring server.

Batch-1 requests (one photo, one user) after an untimed warm-up, p50/p95 per
path, written to ``benchmarks/results/serving_latency.md``:

* ``retriever``: ``Retriever.retrieve`` alone (the model's own cost);
* ``pyfunc``: ``PyFuncModel.predict`` with PNG bytes (+ decode, checks, schema enforcement);
* ``rest``: ``POST /invocations`` of ``mlflow models serve --env-manager local``
  on 127.0.0.1 (+ JSON/base64, HTTP, uvicorn), one client, sequential requests.

    python benchmarks/serving_latency.py --root PROJECT        # a trained project (serving.retriever picks the model)
    python benchmarks/serving_latency.py --root PROJECT --retriever knn --threads 1
    python benchmarks/serving_latency.py                       # no project: the tiny kNN test project

Query photos: the project's test-split queries when it has them, else its item images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from onevision.markdown import table as markdown_table

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std()), "n": int(ms.size)}


def timed(fn, calls: list, warmup: int) -> list[float]:
    for args in calls[:warmup]:
        fn(*args)
    out = []
    for args in calls[warmup:]:
        t0 = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t0)
    return out


def query_images(root: Path, cfg, n: int) -> list[bytes]:
    """Encoded query photos: TEST-split queries of the project if present, else item views / the tiny project's items."""
    from onevision.data.images import encode_png

    for table in ("queries", "views"):
        path = root / "data" / "validated" / f"{table}.parquet"
        if path.exists():
            frame = pd.read_parquet(path, columns=["image"]).dropna()
            if len(frame):
                return [bytes(b) for b in frame["image"].iloc[:n]]
    sys.path.insert(0, str(REPO))
    from tests.support.tiny_trained import item_images

    images = item_images()
    return [encode_png(images[i % len(images)]) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest_latency(model_dir: Path, images: list[bytes], warmup: int, log_path: Path, threads: int) -> tuple[dict[str, float], float]:
    """Serve the saved model, time sequential single-image POSTs; returns (summary, seconds until /ping answered)."""
    from onevision.serving.pyfunc import rest_payload

    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"scoring server exited: {log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2):
                        break
                except OSError:
                    time.sleep(0.25)
            startup = time.perf_counter() - t0
            bodies = [json.dumps(rest_payload([img], [-1], k=10)).encode() for img in images]

            def call(body: bytes) -> None:
                req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()

            return summary(timed(call, [(b,) for b in bodies], warmup)), startup
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="Trained project root (default: build the tiny kNN test project).")
    parser.add_argument("--retriever", choices=["onevision", "knn"], help="Override serving.retriever (default: params.yaml).")
    parser.add_argument("--requests", type=int, default=200, help="Timed batch-1 requests per path.")
    parser.add_argument("--warmup", type=int, default=20, help="Untimed requests first.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in-process and in the server (OMP_NUM_THREADS); 0: defaults.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving_latency.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serving-latency-") as tmp:
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, work: Path) -> None:
    import mlflow  # noqa: F401  (import cost outside the timings)
    import torch

    from onevision.config import PARAMS_FILE, load_config
    from onevision.serving.bundle import build_bundle, read_manifest
    from onevision.serving.pyfunc import save_bundle_model

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root
    if root is None:
        sys.path.insert(0, str(REPO))
        from tests.support.projects import build_project

        root = build_project(work / "project", "tiny-trained").root
    root = root.resolve()
    cfg = load_config(root / PARAMS_FILE, overrides=[f"serving.retriever={args.retriever}"] if args.retriever else [])
    bundle = build_bundle(cfg, root, work / "bundle")
    manifest = read_manifest(bundle)
    model_dir = save_bundle_model(bundle, work / "model")
    n = args.warmup + args.requests
    images = query_images(root, cfg, n)
    images = (images * (n // len(images) + 1))[:n]

    model = mlflow.pyfunc.load_model(str(model_dir))
    python_model = model.unwrap_python_model()
    from onevision.serving.queries import parse_queries

    decoded = [parse_queries(pd.DataFrame({"image": [img]}), python_model.spec) for img in images]
    rows = {}
    rows["retriever"] = summary(timed(lambda x, u: python_model.retriever.retrieve(x, u, args.k), decoded, args.warmup))
    frames = [(pd.DataFrame({"image": [img], "user_id": [-1]}),) for img in images]
    rows["pyfunc"] = summary(timed(lambda f: model.predict(f, params={"k": args.k}), frames, args.warmup))
    rows["rest"], startup = rest_latency(model_dir, images, args.warmup, work / "serve.log", args.threads)

    catalog = "?"
    if manifest["retriever"] == "knn":
        with np.load(bundle / "data" / "embeddings" / "items.npz") as data:
            catalog = f"{len(data['item_ids'])} items x {data['embeddings'].shape[1]} dims"
    elif (bundle / "data" / "sids" / "sid_table.parquet").exists():
        sids = pd.read_parquet(bundle / "data" / "sids" / "sid_table.parquet")
        catalog = f"{len(sids)} items, {sum(c.startswith('code_') for c in sids.columns)}-level SIDs"
    load = os.getloadavg()
    lines = [
        "# Serving latency",
        "",
        f"- model: `{manifest['retriever']}` bundle from `{root}` (profile {cfg.profile}; catalog {catalog}), k={args.k}",
        f"- requests: batch 1, {args.requests} timed after {args.warmup} warm-up, one sequential client",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"(shared; timings on a busy machine are upper bounds), torch {torch.__version__}, {torch.get_num_threads()} torch threads",
        f"- REST server: `mlflow models serve --env-manager local`, 1 uvicorn worker, answered /ping {startup:.1f} s after start",
        "",
    ]
    labels = {"retriever": "Retriever.retrieve (model only)", "pyfunc": "pyfunc predict in-process (PNG bytes)", "rest": "REST POST /invocations (base64 JSON)"}
    lines.append(markdown_table([[labels[key], f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}", f"{s['mean_ms']:.2f} ± {s['std_ms']:.2f}"] for key, s in rows.items()],
                                ["path", "p50 (ms)", "p95 (ms)", "mean ± std (ms)"], align="lrrr"))
    lines += [
        "",
        "pyfunc − retriever is the request handling (base64/PNG decode, image checks, schema enforcement, result table);",
        "rest − pyfunc is JSON parsing, HTTP and the server. Reproduce: `python benchmarks/serving_latency.py [--root PROJECT]`.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    (args.out.with_suffix(".json")).write_text(json.dumps({"manifest": manifest, "results": rows, "rest_startup_s": startup}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
