"""What a system costs to serve: latency, throughput, memory (the faiss contrib/evaluation shape).

* latency: batch-1 calls after an untimed warm-up, summarised as mean ± std
  and p50/p95/p99 (ms);
* throughput: queries per second over the whole test set in batches;
* memory: the peak resident memory a batch call adds (Linux: the kernel's
  high-water mark, reset before the call; elsewhere: a sampling thread), and
  the peak of what Python and numpy allocate (``tracemalloc``, which sees numpy
  buffers but not torch or faiss internals).

Timings use ``time.perf_counter`` around :meth:`Retriever.retrieve` only:
loading inputs and scoring results stay outside.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from threadpoolctl import ThreadpoolController

from onevision.evaluation.metrics import latency_summary
from onevision.retrieval import RetrievalResult, Retriever

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@contextlib.contextmanager
def limit_threads(threads: int) -> Iterator[None]:
    """Cap torch, faiss and every OpenMP/BLAS pool at ``threads`` inside the block (0: leave them alone).

    On a small shared machine OpenMP pools that spin-wait for busy cores make
    small calls (a batch-1 query, a 100-row tree ensemble) 10-50x slower and
    erratic; one thread per call is what a serving replica per core does.
    """
    if threads <= 0:
        yield
        return
    # lazy: only a caller that caps threads loads torch and faiss; the timers and memory probes need neither
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        with ThreadpoolController().limit(limits=threads):
            yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs); False where not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024

    return psutil.Process().memory_info().rss / 2**20


def _release_free_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that a call reusing it shows up in RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once; return its result and ``peak_rss_delta_mb`` (peak RSS above the RSS before the call)."""

    gc.collect()
    _release_free_heap()
    before = rss_mb()
    if _reset_peak_rss() and _status_kb("VmHWM") is not None:
        result = fn()
        peak = _status_kb("VmHWM") / 1024
    else:  # sample RSS from a thread: may miss short spikes
        samples = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mb())
                time.sleep(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            result = fn()
        finally:
            stop.set()
            thread.join()
        peak = max(samples + [rss_mb()])
    return result, {"peak_rss_delta_mb": max(0.0, peak - before)}


def traced_peak(fn: Callable[[], Any]) -> dict[str, float]:
    """Peak Python + numpy allocation during ``fn`` (MB), via tracemalloc."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return {"peak_traced_mb": max(0.0, (peak - base) / 2**20)}


def time_batches(system: Retriever, images: np.ndarray, user_ids: np.ndarray, k: int, batch_size: int
                 ) -> tuple[RetrievalResult, dict[str, float]]:
    """Retrieve for every query in batches; returns the concatenated result and throughput facts.

    ``stage_seconds_per_query`` sums the per-stage timings the system reports (if any).
    """
    ids, scores, stage_seconds = [], [], {}
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        t = time.perf_counter()
        result = system.retrieve(images[batch], user_ids[batch], k)
        total += time.perf_counter() - t
        ids.append(result.item_ids)
        scores.append(result.scores)
        for stage, seconds in (result.timings or {}).items():
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
    n = len(images)
    merged = RetrievalResult(np.concatenate(ids) if ids else np.zeros((0, k), np.int64),
                             np.concatenate(scores) if scores else np.zeros((0, k), np.float32), stage_seconds)
    facts = {"qps": n / total if total > 0 else float("nan"), "batch_size": batch_size, "batch_seconds": total}
    facts["stage_ms_per_query"] = {s: 1e3 * v / max(n, 1) for s, v in stage_seconds.items()}
    return merged, facts


def time_single_queries(system: Retriever, images: np.ndarray, *, user_ids: np.ndarray, k: int, n_calls: int, warmup: int
                        ) -> dict[str, Any]:
    """Batch-1 latency: ``warmup`` untimed calls, then ``n_calls`` timed ones cycling over the queries."""
    n = len(images)
    if n == 0:
        return latency_summary(np.zeros(0))
    for i in range(warmup):
        j = i % n
        system.retrieve(images[j : j + 1], user_ids[j : j + 1], k)
    seconds = np.empty(n_calls)
    stage_seconds: dict[str, list[float]] = {}
    for i in range(n_calls):
        j = (warmup + i) % n
        t = time.perf_counter()
        result = system.retrieve(images[j : j + 1], user_ids[j : j + 1], k)
        seconds[i] = time.perf_counter() - t
        for stage, value in (result.timings or {}).items():
            stage_seconds.setdefault(stage, []).append(value)
    out: dict[str, Any] = latency_summary(seconds)
    out["n_calls"] = n_calls
    if stage_seconds:
        out["stage_p50_ms"] = {s: float(np.median(v) * 1e3) for s, v in stage_seconds.items()}
    return out
