"""Training that repeats bit for bit: the same seed and data give the same weights, in every run.

PyTorch's default CPU kernels for the backward of indexing (``book[codes]``,
embedding lookups: ``index_put_`` with accumulate) add with atomics across
threads, so the order of the float additions changed from process to process.
VRQ's codebooks then differed in their last bits from one ``dvc repro`` to the
next, and the generative stages trained on them drifted further (measured: the
same commit, two small-profile flows, 223 of 983 evaluation numbers different;
MCA, kNN, the encoder and the SID table identical). The deterministic kernels
cost nothing measurable here (the vrq stage: 6.3 s either way) and give the
same weights at any thread count.
"""

from __future__ import annotations

import os

import torch


def deterministic_torch() -> None:
    """Make torch use deterministic kernels from here on (the training stages call this before they train).

    On a GPU, cuBLAS needs a fixed workspace for that (``CUBLAS_WORKSPACE_CONFIG``, read when CUDA starts;
    a value set by the user wins), and ``warn_only`` makes an op without a deterministic kernel warn
    instead of failing the stage.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
