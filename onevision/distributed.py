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

Backend: NCCL when CUDA is available, gloo otherwise. Only rank 0 writes the
stage's outputs; the others train, then leave.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
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
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() and next(module.parameters()).is_cuda else None
    # heads unused by a batch (e.g. user rows of an anonymous stage) must not stall the gradient all-reduce
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


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
