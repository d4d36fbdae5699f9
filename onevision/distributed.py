"""Data-parallel training across processes: torchrun + DistributedDataParallel.

A training stage runs in N processes when ``distributed.nproc_per_node`` > 1
(``onevision stage run`` then relaunches itself under ``torchrun``; see
:func:`torchrun_command`). Every process holds the whole model and the whole
data; for each step all of them draw the same global batch from the same
seeded generator and each takes its share (:func:`shard`), so the optimizer
sees the global batch of a single-process run:

* the loss of a share is rescaled to its part of the global mean
  (:func:`share_scale`), and DDP averages the gradients over processes, so the
  gradient is the global batch's;
* anything random per example (context dropout, augmentation) is drawn for the
  global batch before it is split, so the draws are those of one process.

With dropout off the N-process result equals the single-process one up to
float summation order (the test asserts it); with dropout on, each process
draws its own masks, the same in distribution, not bit for bit.

A loss over the whole batch (the encoder's InfoNCE with in-batch negatives)
cannot be split into shares: each process embeds its contiguous share
(:func:`share_bounds`), gathers everyone's rows (:func:`gather_rows`) and
computes the global loss itself; batch norm normalises with the statistics of
the global batch (:func:`global_batch_norm`, a CPU-capable SyncBatchNorm:
torch's only runs on GPUs).

Backend: gloo, also on a GPU machine: the training loops keep their tensors
on the CPU, and NCCL only reduces CUDA tensors (training on CUDA, and with it
NCCL, is not built yet). Only rank 0 writes the stage's outputs; the others
train, then leave.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_reduce
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the process group (rank 0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init_from_env() -> World:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")  # CPU tensors (module docstring): gloo even where CUDA is present
    return world()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(idx: torch.Tensor, w: World) -> torch.Tensor:
    """This process's share of a global batch of indices (strided, so shares differ by at most one)."""
    return idx[w.rank :: w.size] if w.parallel else idx


def share_scale(local: float | torch.Tensor, total: float | torch.Tensor, w: World) -> float:
    """Factor turning a share's mean loss into its part of the global mean, given DDP's gradient average.

    A share holding ``local`` of the batch's ``total`` weight contributes ``local / total`` of the global
    mean; DDP divides the summed gradients by the world size, so the factor is ``size * local / total``.
    """
    return float(w.size * float(local) / max(float(total), 1e-12)) if w.parallel else 1.0


def wrap(module: torch.nn.Module, w: World) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when there is more than one process."""
    if not w.parallel:
        return module

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() and next(module.parameters()).is_cuda else None
    # heads unused by a batch (e.g. user rows of an anonymous stage) must not stall the gradient all-reduce
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def share_bounds(n: int, w: World) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` shares of ``n`` rows, one per rank, sizes differing by at most one."""
    base, extra = divmod(n, w.size)
    bounds, lo = [], 0
    for r in range(w.size):
        hi = lo + base + (r < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def gather_rows(local: torch.Tensor, bounds: list[tuple[int, int]], w: World) -> torch.Tensor:
    """Every rank's rows (shares ``bounds``) in global order; gradients flow to this rank's own rows only.

    Every process then computes the same global loss; its backward reaches this rank's share, and DDP's
    average of the parameter gradients over ranks adds up the shares' contributions once the loss is
    multiplied by the world size (:func:`global_loss_scale`).
    """
    if not w.parallel:
        return local
    longest = max(hi - lo for lo, hi in bounds)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    rows = [local if r == w.rank else parts[r][: hi - lo] for r, (lo, hi) in enumerate(bounds)]
    return torch.cat(rows)


def global_loss_scale(w: World) -> float:
    """Factor for a loss every rank computes over the gathered global batch (:func:`gather_rows`)."""
    return float(w.size)


def _global_batch_norm(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Batch norm with the mean and variance of the rows of every rank (autograd through the all-reduce)."""

    if not bn.training:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    dims = [0, *range(2, x.dim())]
    channels = x.shape[1]
    count = torch.tensor([x.numel() / channels], dtype=torch.float64)
    stats = all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64), count]))
    total = stats[-1]
    mean = stats[:channels] / total
    var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - m).add_(mean.to(x.dtype), alpha=m)
            bn.running_var.mul_(1 - m).add_((var * total / (total - 1)).to(x.dtype), alpha=m)
    shape = [1, channels] + [1] * (x.dim() - 2)
    y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + bn.eps)
    return y * bn.weight.view(shape) + bn.bias.view(shape) if bn.affine else y


@contextmanager
def global_batch_norm(module: torch.nn.Module, w: World) -> Iterator[None]:
    """Inside: every batch-norm layer of ``module`` trains on the global batch's statistics (no-op alone).

    The layers keep their class, parameters and buffers (a saved model is the same as a single process's).
    """
    layers = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] if w.parallel else []
    for bn in layers:
        bn.forward = partial(_global_batch_norm, bn)
    try:
        yield
    finally:
        for bn in layers:
            del bn.forward


def all_sum(values: list[float], w: World) -> list[float]:
    """Element-wise sum over processes (for epoch statistics); the values themselves when alone."""
    if not w.parallel:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that reruns ``argv`` (an ``onevision`` command line, without the program) in ``nproc`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "onevision", *argv]
