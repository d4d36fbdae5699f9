"""InfoNCE and circle loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from onevision.encoder.losses import align_loss, circle_loss, info_nce

# anchors a0, a1 and positives p0, p1: s = a @ p.T = [[1.0, 0.6], [0.0, 0.8]]
A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_info_nce_one_direction_by_hand():
    tau = 0.5
    row0 = -(1.0 / tau) + _lse(1.0 / tau, 0.6 / tau)
    row1 = -(0.8 / tau) + _lse(0.0 / tau, 0.8 / tau)
    got = info_nce(A, P, temperature=tau, symmetric=False)
    assert float(got) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_info_nce_symmetric_by_hand():
    tau = 1.0
    rows = (-1.0 + _lse(1.0, 0.6)) + (-0.8 + _lse(0.0, 0.8))
    cols = (-1.0 + _lse(1.0, 0.0)) + (-0.8 + _lse(0.6, 0.8))
    got = info_nce(A, P, temperature=tau, symmetric=True)
    assert float(got) == pytest.approx(0.5 * (rows / 2 + cols / 2), rel=1e-6)


def test_circle_loss_by_hand():
    m, gamma = 0.25, 2.0
    # row 0: s_p = 1.0, s_n = 0.6
    a_p, a_n = 1 + m - 1.0, 0.6 + m
    l0 = math.log1p(math.exp(gamma * a_n * (0.6 - m) - gamma * a_p * (1.0 - (1 - m))))
    # row 1: s_p = 0.8, s_n = 0.0
    a_p, a_n = 1 + m - 0.8, 0.0 + m
    l1 = math.log1p(math.exp(gamma * a_n * (0.0 - m) - gamma * a_p * (0.8 - (1 - m))))
    got = circle_loss(A, P, margin=m, gamma=gamma)
    assert float(got) == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_same_item_rows_are_not_negatives():
    # rows 0 and 1 show one item: with the mask each row has no negative left but row 2
    a = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    p = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    s = a @ p.T
    want_row0 = float(-s[0, 0] / 0.1 + torch.logsumexp(torch.stack([s[0, 0], s[0, 2]]) / 0.1, 0))
    got = info_nce(a[[0]], p[[0]], temperature=0.1)  # sanity: a single pair has zero loss
    assert float(got) == pytest.approx(0.0, abs=1e-6)
    logits_loss = info_nce(a, p, temperature=0.1, symmetric=False, same_item=same)
    rows = [want_row0]
    rows.append(float(-s[1, 1] / 0.1 + torch.logsumexp(torch.stack([s[1, 1], s[1, 2]]) / 0.1, 0)))
    rows.append(float(-s[2, 2] / 0.1 + torch.logsumexp(s[2] / 0.1, 0)))
    assert float(logits_loss) == pytest.approx(sum(rows) / 3, rel=1e-5)
    # circle: masking the duplicate changes the loss, and perfect pairs far from negatives give ~0
    assert float(circle_loss(a, p, same_item=same)) != pytest.approx(float(circle_loss(a, p)))


def test_align_loss_weights_the_parts():
    total, parts = align_loss(A, P, lambda_infonce=0.7, lambda_circle=0.3, temperature=0.5, circle_margin=0.25, circle_gamma=2.0)
    assert float(total) == pytest.approx(0.7 * parts["infonce"] + 0.3 * parts["circle"], rel=1e-6)
    only_nce, parts2 = align_loss(A, P, lambda_infonce=1.0, lambda_circle=0.0, temperature=0.5, circle_margin=0.25, circle_gamma=2.0)
    assert parts2["circle"] == 0.0 and float(only_nce) == pytest.approx(parts["infonce"])


def test_losses_fall_when_pairs_align():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    noisy = torch.nn.functional.normalize(x + 2.0 * torch.randn(16, 8, generator=g), dim=1)
    close = torch.nn.functional.normalize(x + 0.05 * torch.randn(16, 8, generator=g), dim=1)
    assert float(info_nce(x, close)) < float(info_nce(x, noisy))
    assert float(circle_loss(x, close)) < float(circle_loss(x, noisy))
