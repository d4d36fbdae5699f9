"""Data-parallel training (onevision.distributed): `onevision stage run` under torchrun with 2 CPU processes
(gloo) trains align_encoder and pretrain -> sft -> dpo to the single-process result.

Same seed, same global batch; dropout off, so that the two runs draw the same randomness (with dropout each
process draws its own masks). Tolerance: float summation order differs (the gradient is summed over two
shares, then averaged), so generative weights agree to 5e-5 absolute (measured: 1.8e-5; without the share
rescaling of the loss SFT drifts to 1.5e-4), the encoder's to 2e-4 (measured 5.9e-5), losses to 1e-4 relative
(the encoder's to 1e-3: ENCODER_LOSS_RTOL says why), not bit for bit; the numbers per ATEN_CPU_CAPABILITY are next
to each tolerance. A direct gradient comparison, in float64 so that it holds to 1e-10 on any CPU, covers what
AdamW's scale invariance would hide.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from onevision import paths
from tests.support.projects import TINY_STAND_IN, build_project

STAGES = ("pretrain", "sft", "dpo")
# Measured 1- vs 2-process gaps on an AMD EPYC (2 cores) with ATEN_CPU_CAPABILITY forced to default / avx2 / avx512:
# generative weights 1.5e-5 / 1.7e-5 / 1.8e-5 (worst of pretrain, sft, dpo); losses (5 decimals) equal on all three.
WEIGHT_ATOL = 5e-5
LOSS_RTOL = 1e-4


def _set_processes(root: Path, n: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["overrides"].setdefault("distributed", {})["nproc_per_node"] = n
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run_stages(root: Path, stages: tuple[str, ...] = STAGES) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")}
    out = []
    for stage in stages:
        proc = subprocess.run([sys.executable, "-m", "onevision", "stage", "run", stage, "--root", str(root)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-3000:]}"
        out.append(proc.stderr)
    return out


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    build_project(one, "stand-in", profile="small", overrides=[*TINY_STAND_IN, "generative.model.dropout=0.0", "generative.threads=2"])
    two = tmp_path / "two"
    shutil.copytree(one, two)
    _set_processes(two, 2)

    _run_stages(one)
    logs = _run_stages(two)
    assert all("2 data-parallel processes under torchrun" in log for log in logs)

    for stage in STAGES:
        m1 = json.loads((one / paths.metrics_file(stage)).read_text())
        m2 = json.loads((two / paths.metrics_file(stage)).read_text())
        assert m2["processes"] == 2 and "processes" not in m1
        for epoch, rec in m1["history"].items():
            for key in ("loss", "val_loss"):
                if key in rec:
                    assert m2["history"][epoch][key] == pytest.approx(rec[key], rel=LOSS_RTOL), (stage, epoch, key)
        w1 = torch.load(one / "models" / "generative" / stage / "weights.pt", weights_only=True)
        w2 = torch.load(two / "models" / "generative" / stage / "weights.pt", weights_only=True)
        assert w1.keys() == w2.keys()
        worst = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1 if w1[k].numel())
        assert worst <= WEIGHT_ATOL, f"{stage}: weights differ by {worst:.2e} > {WEIGHT_ATOL}"
        # the same weights rank the same items: the VAL probe agrees
        assert m2["probe"]["hr_at_10"] == pytest.approx(m1["probe"]["hr_at_10"], abs=0.01)


def _worst_gap(a: Path, b: Path) -> float:
    w1, w2 = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert w1.keys() == w2.keys()
    return max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1 if w1[k].numel() and w1[k].is_floating_point())


# Measured: weights 5.9e-5, item embeddings 8.3e-5 apart after 28 AdamW steps (float summation order); with
# batch norm on each share's own statistics instead of the global batch's, the first epoch's loss is 6 % off.
# Per kernel (AMD EPYC, ATEN_CPU_CAPABILITY default / avx2 / avx512): weights 5.9e-5 / 6.0e-7 / 5.9e-5, embeddings
# 8.3e-5 / 7.5e-7 / 8.3e-5, epoch-2 loss 1.8e-6 / 2.4e-8 / 1.7e-6 relative.
ENCODER_ATOL = 2e-4
EMBED_ATOL = 2e-4
# The epoch losses: AdamW turns the last-bit differences of the kernels' summation order into a drift that depends on
# the CPU. Measured here at most 1.8e-6 relative (above), but 2.0e-4 on an Intel Xeon with its own avx512 kernels
# (epoch 2: 5.406610 vs 5.405543, three runs; issue 37), twice LOSS_RTOL. 1e-3 is five times that and still 60 times
# below the 6 % of the error it guards against (batch norm on the shares' statistics).
ENCODER_LOSS_RTOL = 1e-3
ENCODER = ["encoder.width=8", "encoder.hidden_dim=32", "encoder.embed_dim=16", "encoder.token_grid=2", "encoder.epochs=2",
           "encoder.batch_size=45", "encoder.threads=2"]


@pytest.mark.slow
def test_two_process_align_encoder_matches_one_process(tmp_path):
    """align_encoder: InfoNCE over the global batch's negatives (gathered), batch norm on the global batch's
    statistics, augmentations drawn once for the global batch; odd batches (45 pairs) split 23/22."""
    one = tmp_path / "one"
    one.mkdir()
    build_project(one, "stand-in", profile="small", overrides=[*TINY_STAND_IN, *ENCODER])
    two = tmp_path / "two"
    shutil.copytree(one, two)
    _set_processes(two, 2)

    _run_stages(one, ("align_encoder",))
    (log,) = _run_stages(two, ("align_encoder",))
    assert "2 data-parallel processes under torchrun" in log

    m1 = json.loads((one / paths.metrics_file("align_encoder")).read_text())
    m2 = json.loads((two / paths.metrics_file("align_encoder")).read_text())
    assert m2["processes"] == 2
    loss_gap = max(abs(m2["history"][epoch]["loss"] - rec["loss"]) / abs(rec["loss"]) for epoch, rec in m1["history"].items()
                   if "loss" in rec)
    # every weight and batch-norm buffer (the statistics are the global batch's, so running_var agrees too)
    worst = _worst_gap(one / "models" / "encoder" / "weights.pt", two / "models" / "encoder" / "weights.pt")
    # the same function: the item embeddings written by the stage agree
    e1, e2 = np.load(one / "data" / "embeddings" / "items.npz"), np.load(two / "data" / "embeddings" / "items.npz")
    assert (e1["item_ids"] == e2["item_ids"]).all()
    gap = float(np.abs(e1["embeddings"] - e2["embeddings"]).max())
    # all three gaps in one message: on a CPU that fails one, the others are what a new tolerance is measured from
    gaps = f"loss {loss_gap:.2e} relative (<= {ENCODER_LOSS_RTOL}), weights {worst:.2e} (<= {ENCODER_ATOL}), " \
           f"item embeddings {gap:.2e} (<= {EMBED_ATOL}); ATEN_CPU_CAPABILITY={torch.backends.cpu.get_cpu_capability()}"
    assert loss_gap <= ENCODER_LOSS_RTOL and worst <= ENCODER_ATOL and gap <= EMBED_ATOL, f"align_encoder: {gaps}"
    assert m2["probe_top1"] == pytest.approx(m1["probe_top1"], abs=0.01)


def _grads(rank: int, size: int, port: int, out: str) -> None:
    """One rank of :func:`test_global_batch_gradients_equal_one_process` (``size`` 1: the plain single process)."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from onevision import distributed

    if size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    w = distributed.world()
    torch.manual_seed(0)
    # float64: the two runs sum the same terms in another order (the gradient over two shares, then all-reduced),
    # which moves float32 results by a few ulp, as far as the CPU's vector width makes it (see GRAD_TOL)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 4)).double()
    model = distributed.wrap(net, w)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # 7 rows: shares of 4 and 3
    bounds = distributed.share_bounds(len(x), w)
    lo, hi = bounds[w.rank]
    with distributed.global_batch_norm(net, w):
        emb = distributed.gather_rows(F.normalize(model(x[lo:hi]), dim=-1), bounds, w)
        loss = F.cross_entropy(emb @ emb.T / 0.1, torch.arange(len(x)).roll(1))  # every row against every other
        (loss * distributed.global_loss_scale(w) if w.parallel else loss).backward()
    if w.is_main:
        torch.save({n: p.grad for n, p in net.named_parameters()} | {"running_var": net[1].running_var}, out)
    if size > 1:
        dist.destroy_process_group()
        # Leave without tearing down the DDP wrapper: freeing its reducer, which holds the last reference to the
        # gloo group, joins gloo's threads under the GIL while one of them waits for the GIL (torch 2.13; seen
        # once: a rank hung for good here). The results are on disk; mp.spawn checks the exit code.
        os._exit(0)


# In float32 this comparison used up to 0.55 of atol=1e-6 + rtol=1e-5 (ATEN_CPU_CAPABILITY=default; 0.36 with avx2 and
# avx512, AMD EPYC): the kernels' summation order, not the code under test. In float64 the same order effects are
# ~1e-16 relative; 1e-10 leaves them a margin of 10^5 and still catches any wrong scale or missing term (>= 1e-2).
GRAD_TOL = 1e-10


def test_global_batch_gradients_equal_one_process(tmp_path):
    """gather_rows + global_batch_norm + global_loss_scale under DDP give the single-process gradient of a loss
    over the whole batch (AdamW would hide a wrong scale of it: this compares the gradients themselves)."""
    import torch.multiprocessing as mp

    from tests.support.stack import free_port

    _grads(0, 1, 0, str(tmp_path / "one.pt"))
    mp.spawn(_grads, args=(2, free_port(), str(tmp_path / "two.pt")), nprocs=2, join=True)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name, g in one.items():
        assert g.dtype == torch.float64
        assert torch.allclose(two[name], g, atol=GRAD_TOL, rtol=GRAD_TOL), (name, float((two[name] - g).abs().max()))
