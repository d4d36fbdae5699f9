"""Choosing the shopper term's weight on VAL (onevision.generative.probe.choose_shopper_weight): the most VAL orders
wins, but a weight > 0 is kept only when it buys generative.decode.min_shopper_gain over no term (it costs latency at
every level), and a model without a leaf head (no user store) never gets one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from onevision.config import Config, load_config
from onevision.generative import probe as probe_module
from tests.support.defaults import default_params_file


def fake_model(leaf: bool = True):
    return SimpleNamespace(leaf=object() if leaf else None, shopper_weight=torch.zeros(()))


@pytest.fixture
def val_orders(monkeypatch):
    """VAL orders/query by shopper weight, as the personalised probe would measure them."""
    table: dict[float, float] = {}

    def fake_probe(model, data, cfg, anonymous=False):
        return {"sim_orders_per_query": table[float(model.shopper_weight)], "hr_at_10": 0.88}

    monkeypatch.setattr(probe_module, "probe", fake_probe)
    monkeypatch.setattr(probe_module, "beam_other_recall", lambda model, data, cfg: 0.7)
    return table


def config(weights: list[float], min_gain: float) -> Config:
    cfg = load_config(default_params_file())
    cfg.generative.decode.shopper_weights = weights
    cfg.generative.decode.min_shopper_gain = min_gain
    return cfg


DATA = SimpleNamespace(val=[0] * 10)


def test_the_weight_with_most_val_orders_is_kept_when_it_pays_for_its_cost(val_orders):
    val_orders.update({0.0: 0.2385, 0.5: 0.2387, 1.0: 0.2392, 2.0: 0.2400})  # +0.63 % at 2 (the small profile)
    model = fake_model()
    out = probe_module.choose_shopper_weight(model, DATA, config([0.0, 0.5, 1.0, 2.0], 0.005))
    assert out["shopper_weight"] == 2.0 and float(model.shopper_weight) == 2.0
    assert set(out["val_by_shopper_weight"]) == {"s0", "s0.5", "s1", "s2"}


def test_a_gain_below_the_minimum_keeps_the_beam_the_same_for_every_shopper(val_orders):
    val_orders.update({0.0: 0.21321, 0.5: 0.2135, 1.0: 0.2127, 2.0: 0.21073})  # +0.14 % at 0.5 (the default profile)
    model = fake_model()
    model.shopper_weight.fill_(1.0)  # whatever it was before
    assert probe_module.choose_shopper_weight(model, DATA, config([0.5, 1.0, 2.0], 0.005))["shopper_weight"] == 0.0
    assert float(model.shopper_weight) == 0.0
    # with no minimum the best weight wins
    assert probe_module.choose_shopper_weight(model, DATA, config([0.5, 1.0, 2.0], 0.0))["shopper_weight"] == 0.5


def test_no_leaf_head_or_no_grid_means_no_shopper_term(val_orders):
    val_orders.update({0.0: 0.2, 1.0: 0.3})
    for model, weights in ((fake_model(leaf=False), [0.0, 1.0]), (fake_model(), [0.0])):
        model.shopper_weight.fill_(1.0)
        assert probe_module.choose_shopper_weight(model, DATA, config(weights, 0.0)) == {}
        assert float(model.shopper_weight) == 0.0


def test_the_shopper_term_reads_the_same_values_by_either_route():
    """ShopperTerm takes a product over every prefix of a level when that is cheaper, else the makeup of the read
    children only (bounded by the beam on a large catalog): both give weight x <lift of the query, makeup of the child>."""
    from onevision.generative.geosearch import ShopperTerm

    gen = torch.Generator().manual_seed(0)
    makeup = torch.rand(7, 5, generator=gen)  # 7 prefixes at this depth, 3 brands + 2 categories
    lift = torch.randn(2, 5, generator=gen)  # 2 queries
    child = torch.tensor([[0, 3, -1, 6], [2, -1, -1, 5], [1, 4, 0, -1]])  # 3 beams, 4 codes
    query_of = torch.tensor([0, 0, 1])
    term = ShopperTerm([makeup], lift, 1.5)
    dense = term(0, child, query_of)  # 7 prefixes <= 12 children read: the whole-level product
    term.makeups = [torch.cat([makeup, torch.rand(20, 5, generator=gen)])]  # 27 prefixes > 12: the children's rows
    sparse = term(0, child, query_of)
    for r in range(3):
        for v in range(4):
            if child[r, v] >= 0:
                want = 1.5 * float(lift[query_of[r]] @ makeup[child[r, v]])
                assert dense[r, v].item() == pytest.approx(want, abs=1e-5)
                assert sparse[r, v].item() == pytest.approx(want, abs=1e-5)
