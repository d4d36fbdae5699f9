"""Dynamic pruning: no-op knobs change nothing, pruned search stays valid and complete, early exit is exact,
the calibration's Pareto set and choice, the config section."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onevision.config import ConfigError, load_config
from onevision.generative.calibrate import choose_point, pareto_set, relative_loss, score_points, sweep_grid
from onevision.generative.decode import beam_search
from onevision.generative.pruning import (
    NO_PRUNING,
    PruningConfig,
    load_pruning,
    pruned_beam_search,
    save_pruning,
    select_visual_tokens,
)
from onevision.generative.trie import SIDTrie
from tests.code.test_generative_decode import SIZES, catalog, random_context, tiny_model
from tests.support.defaults import default_params_file

DEFAULT_PARAMS = default_params_file()
NO_OP = {
    "visual": PruningConfig(visual_keep_mass=1.0, min_visual_tokens=3),
    "margin": PruningConfig(beam_margin=math.inf),
    "widths": PruningConfig(level_beam_widths=None),
    "early_exit": PruningConfig(early_exit=False),
}


def assert_same(a, b) -> None:
    assert torch.equal(a.item_ids, b.item_ids)
    assert torch.equal(a.sids, b.sids)
    assert torch.equal(a.scores, b.scores)


def renormalised_log_probs(model, ctx, trie: SIDTrie) -> torch.Tensor:
    """Exact log p(sid | ctx) of every catalog SID under the constrained, renormalised distribution: (B, N)."""
    B, N = len(ctx), trie.n_items
    with torch.no_grad():
        memory, mask = model.encode(ctx)
        rows = torch.arange(B).repeat_interleave(N)
        logits = model.logits_for(memory[rows], mask[rows], sids=trie.sids.repeat(B, 1))  # L x (B*N, V)
    total = torch.zeros(B * N)
    node = torch.zeros(B * N, dtype=torch.long)
    sids = trie.sids.repeat(B, 1)
    for level, lg in enumerate(logits):
        lp = F.log_softmax(lg.masked_fill(~trie.allowed(level, node), float("-inf")), dim=-1)
        total += lp.gather(1, sids[:, level : level + 1]).squeeze(1)
        node = trie.child(level, node, sids[:, level])
    return total.view(B, N)


# --------------------------------------------------------------------------- no-op knobs


@pytest.mark.parametrize("knob", list(NO_OP))
@pytest.mark.parametrize(("beam_width", "k"), [(3, 7), (5, 5), (2, 10)])
def test_each_knob_at_its_no_pruning_setting_changes_nothing(knob, beam_width, k):
    """The general pruned code path (not the plain fallback) with the knob off reproduces plain beam search bit for bit."""
    model, trie, ctx = tiny_model(1), catalog(40, seed=2), random_context(16, seed=1)
    plain = beam_search(model, ctx, trie=trie, beam_width=beam_width, k=k)
    assert_same(pruned_beam_search(model, ctx, trie=trie, beam_width=beam_width, k=k, pruning=NO_OP[knob]), plain)
    assert_same(beam_search(model, ctx, trie=trie, beam_width=beam_width, k=k, pruning=NO_OP[knob]), plain)  # dispatch


def test_full_visual_mass_keeps_every_token_and_pruning_drops_weak_ones():
    visual = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [0.0, 0.0], [6.0, 8.0]]])  # norms 5, 1, 0, 10
    idx, mask = select_visual_tokens(visual, 1.0)
    assert sorted(idx[mask].tolist()) == [0, 1, 2, 3]
    idx, mask = select_visual_tokens(visual, 0.9)  # 10 + 5 = 15 of 16 ≥ 90 %
    assert idx[mask].tolist() == [3, 0]
    idx, mask = select_visual_tokens(visual, 0.1, min_tokens=3)
    assert idx[mask].tolist() == [3, 0, 1]
    two = torch.cat([visual, torch.ones(1, 4, 2)])  # second query: equal tokens -> keeps more
    idx, mask = select_visual_tokens(two, 0.6)
    assert mask.sum(1).tolist() == [1, 3] and idx.shape == (2, 3)


def test_visual_pruning_shortens_the_context_and_masks_padding():
    model, ctx = tiny_model(2), random_context(2, seed=4)
    ctx.visual = torch.ones(2, 4, 8)
    ctx.visual[0, 2] *= 50.0  # query 0: one dominant token; query 1: four equal ones
    full, full_mask = model.encode(ctx)
    pruned, mask = model.encode(ctx, lambda v: select_visual_tokens(v, 0.5))
    assert full.shape[1] == 7 and full_mask.all()  # image, 4 visual, user, 1 used history slot
    assert pruned.shape[1] == 5  # the batch's longest keep: 2 visual tokens
    assert mask[0].tolist() == [True, True, False, True, True] and mask[1].all()  # query 0 keeps 1, padded


# --------------------------------------------------------------------------- validity and completeness


def random_config(rng: np.random.Generator) -> PruningConfig:
    return PruningConfig(
        visual_keep_mass=float(rng.choice([1.0, 0.9, 0.5, 0.1])),
        min_visual_tokens=int(rng.integers(1, 3)),
        beam_margin=float(rng.choice([math.inf, 0.0, 0.5, 2.0])),
        level_beam_widths=[None, (1,), (2, 1), (1, 3)][int(rng.integers(4))],
        early_exit=bool(rng.integers(2)),
    )


def test_pruned_search_never_emits_an_invalid_sid_and_keeps_k_items():
    """Many random configs, models and catalogs: every SID is a catalog item, results are unique and sorted,
    and the search always returns min(k, catalog size) items, even with one beam per level or a zero margin."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        config = random_config(rng)
        k, width = int(rng.integers(1, 15)), int(rng.integers(1, 8))
        trie = catalog(int(rng.integers(3, 60)), seed=trial)
        model, ctx = tiny_model(trial % 5, std=0.8), random_context(int(rng.integers(1, 9)), seed=trial)
        res = beam_search(model, ctx, trie=trie, beam_width=width, k=k, pruning=config)
        n = min(k, trie.n_items)
        assert res.invalid_rate == 0.0, config
        assert (res.item_ids[:, :n] >= 0).all() and torch.isfinite(res.scores[:, :n]).all(), (config, k, trie.n_items)
        assert (res.item_ids[:, n:] == -1).all()
        found = trie.lookup(res.sids[:, :n].reshape(-1, len(SIZES))).view(-1, n)
        assert torch.equal(found, res.item_ids[:, :n])  # each SID names its item
        for row in res.item_ids[:, :n].tolist():
            assert len(set(row)) == len(row)
        assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()


def test_beam_pruning_with_zero_margin_and_width_one_still_finds_k_items():
    model, trie, ctx = tiny_model(3, std=1.0), catalog(50, seed=3), random_context(12, seed=3)
    config = PruningConfig(beam_margin=0.0, level_beam_widths=(1,))
    for k in (1, 4, 10, 30):
        res = beam_search(model, ctx, trie=trie, beam_width=1, k=k, pruning=config)
        assert (res.item_ids >= 0).all() and res.invalid_rate == 0.0
    best = beam_search(model, ctx, trie=trie, beam_width=1, k=1, pruning=config)
    greedy = beam_search(model, ctx, trie=trie, beam_width=1, k=1)
    assert torch.equal(best.item_ids, greedy.item_ids)  # one beam per level, k=1: greedy decoding


def test_beam_pruning_compacts_the_beam_axis():
    """A zero margin leaves each query the fewest beams that still cover k items: decoding gets cheaper."""
    model, trie, ctx = tiny_model(4, std=1.0), catalog(60, seed=4), random_context(1, seed=4)
    widths = []
    original = model.decode

    def spy(x, *args, **kwargs):
        widths.append(x.shape[0])
        return original(x, *args, **kwargs)

    model.decode = spy
    beam_search(model, ctx, trie=trie, beam_width=8, k=3, pruning=PruningConfig(beam_margin=0.0))
    pruned = list(widths)
    widths.clear()
    beam_search(model, ctx, trie=trie, beam_width=8, k=3)
    assert sum(pruned) < sum(widths) and pruned[0] == widths[0] == 1


# --------------------------------------------------------------------------- early exit


@pytest.mark.parametrize(("beam_width", "k"), [(2, 5), (4, 8), (60, 10)])
def test_early_exit_equals_the_renormalised_search_without_it(beam_width, k):
    model, trie, ctx = tiny_model(5), catalog(30, seed=6), random_context(16, seed=6)
    full = beam_search(model, ctx, trie=trie, beam_width=beam_width, k=k, pruning=PruningConfig(renormalise=True))
    early = beam_search(model, ctx, trie=trie, beam_width=beam_width, k=k, pruning=PruningConfig(early_exit=True))
    assert torch.equal(full.item_ids, early.item_ids) and torch.equal(full.sids, early.sids)
    torch.testing.assert_close(full.scores, early.scores, atol=1e-5, rtol=0)


def test_early_exit_with_an_exhaustive_beam_is_exact_under_the_renormalised_distribution():
    model, trie, ctx = tiny_model(6), catalog(25, seed=8), random_context(8, seed=8)
    res = beam_search(model, ctx, trie=trie, beam_width=60, k=10, pruning=PruningConfig(early_exit=True))
    exact = renormalised_log_probs(model, ctx, trie).topk(10, dim=1)
    assert torch.equal(res.item_ids, trie.leaf_item[exact.indices])
    torch.testing.assert_close(res.scores, exact.values, atol=1e-5, rtol=0)


def test_early_exit_stops_after_the_first_level_when_all_completions_are_unique():
    """Every first code names one item: one decoding step settles every beam, and the items are the plain search's."""
    sids = np.array([[c, (3 * c) % 5, c % 3] for c in range(4)])
    trie = SIDTrie(sids, np.array([10, 11, 12, 13]), SIZES)
    model, ctx = tiny_model(7), random_context(5, seed=7)
    steps = []
    original = model.decode
    model.decode = lambda x, *a, **kw: steps.append(x.shape[0]) or original(x, *a, **kw)
    res = beam_search(model, ctx, trie=trie, beam_width=4, k=4, pruning=PruningConfig(early_exit=True))
    assert len(steps) == 1
    model.decode = original
    plain = beam_search(model, ctx, trie=trie, beam_width=4, k=4)
    assert torch.equal(res.item_ids.sort(dim=1).values, plain.item_ids.sort(dim=1).values)
    assert res.invalid_rate == 0.0 and torch.equal(trie.lookup(res.sids.reshape(-1, 3)).view(5, 4), res.item_ids)


def test_trie_subtree_sizes():
    trie = SIDTrie(np.array([[0, 1, 2], [0, 1, 3], [1, 0, 0], [2, 2, 2]]), np.array([10, 11, 12, 13]))
    assert [c.tolist() for c in trie.leaf_count] == [[4], [2, 1, 1], [2, 1, 1], [1, 1, 1, 1]]
    assert trie.subtree_size(1, torch.tensor([0, 2, -1])).tolist() == [2, 1, 0]
    assert trie.leaf_item[trie.only_leaf(2, torch.tensor([1, 2]))].tolist() == [12, 13]


# --------------------------------------------------------------------------- config and calibration


def test_pruning_config_round_trip_and_validation(tmp_path):
    config = PruningConfig(visual_keep_mass=0.8, beam_margin=3.0, level_beam_widths=[4, 8], early_exit=True)
    assert PruningConfig.from_dict(config.to_dict()) == config
    assert PruningConfig.from_dict(NO_PRUNING.to_dict()) == NO_PRUNING and NO_PRUNING.to_dict()["beam_margin"] is None
    assert not NO_PRUNING.active and config.active and config.label() == "vis0.8+m3+w4,8+exit"
    assert config.level_width(0) == 4 and config.level_width(5) == 8
    save_pruning(config, tmp_path, {"label": config.label()})
    assert load_pruning(tmp_path) == config and load_pruning(tmp_path / "nothing") is None
    for bad in ({"visual_keep_mass": 0.0}, {"beam_margin": -1.0}, {"level_beam_widths": [0]}, {"min_visual_tokens": 0}):
        with pytest.raises(ValueError):
            PruningConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        PruningConfig.from_dict({"margin": 3})
    with pytest.raises(ValueError, match="constrained"):
        beam_search(tiny_model(), random_context(1), trie=catalog(5), beam_width=2, k=2, constrained=False, pruning=config)


def test_config_section_validates(tmp_path):
    cfg = load_config(DEFAULT_PARAMS, profile="small")
    assert cfg.pruning.max_relative_loss == 0.01 and cfg.pruning.enabled
    grid = sweep_grid(cfg.pruning)
    assert grid[0] == NO_PRUNING and len(set(grid)) == len(grid) and 2 < len(grid) <= 40
    for bad in ("pruning.visual_keep_mass=[1.5]", "pruning.beam_margin=[-1]", "pruning.level_beam_widths=[[]]",
                "pruning.max_relative_loss=2", "pruning.select_latency=fastest", "pruning.grid=1"):
        with pytest.raises(ConfigError, match="pruning"):
            load_config(DEFAULT_PARAMS, overrides=[bad])


def synthetic_points(specs: list[tuple[float, float, float]]) -> list[dict]:
    """(hr@10, orders, latency) per point; the first is the unpruned baseline."""
    points = [{"quality": {"hr@10": hr, "sim_orders_per_1k": orders}, "latency": {"batch1_p50_ms": ms}} for hr, orders, ms in specs]
    score_points(points, ["hr@10", "sim_orders_per_1k"])
    return points


def test_chooser_picks_the_fastest_point_within_the_bound():
    points = synthetic_points([
        (0.500, 40.0, 10.0),  # 0 unpruned
        (0.499, 39.9, 8.0),   # 1 within 1 %
        (0.497, 39.7, 6.0),   # 2 within 1 % (0.6 %, 0.75 %): the answer
        (0.480, 40.0, 4.0),   # 3 HR loss 4 %: out
        (0.500, 38.0, 3.0),   # 4 orders loss 5 %: out
        (0.499, 39.8, 7.0),   # 5 within, slower than 2
    ])
    assert choose_point(points, 0.01, latency_key="batch1_p50_ms") == 2
    assert choose_point(points, 0.05, latency_key="batch1_p50_ms") == 4
    assert choose_point(points, 0.0, latency_key="batch1_p50_ms") == 0


def test_chooser_falls_back_to_no_pruning_when_nothing_qualifies():
    points = synthetic_points([(0.5, 40.0, 10.0), (0.4, 40.0, 5.0), (0.5, 30.0, 6.0), (0.5, 40.0, 12.0)])
    assert choose_point(points, 0.01, latency_key="batch1_p50_ms") == 0  # 3 qualifies but is slower


def test_pareto_set():
    points = synthetic_points([(0.5, 40.0, 10.0), (0.49, 40.0, 5.0), (0.45, 40.0, 6.0), (0.40, 40.0, 2.0), (0.5, 40.0, 11.0), (0.3, 40.0, 3.0)])
    assert pareto_set(points, "batch1_p50_ms") == [3, 1, 0]  # fastest first; 2, 4, 5 are dominated
    chosen = choose_point(points, 0.05, latency_key="batch1_p50_ms")
    assert chosen == 1 and chosen in pareto_set(points, "batch1_p50_ms")  # the choice is always on the front


def test_relative_loss():
    assert relative_loss(0.99, 1.0) == pytest.approx(0.01)
    assert relative_loss(1.1, 1.0) == pytest.approx(-0.1)
    assert relative_loss(0.0, 0.0) == 0.0 and relative_loss(None, 1.0) == math.inf


def test_sweep_grid_is_the_product_with_no_pruning_first():
    cfg = load_config(DEFAULT_PARAMS, overrides=["pruning.visual_keep_mass=[1.0,0.8]", "pruning.beam_margin=[null,2.0]",
                                              "pruning.level_beam_widths=[null]", "pruning.early_exit=[false,true]"])
    grid = sweep_grid(cfg.pruning)
    assert grid[0] == NO_PRUNING and len(grid) == 8
    expected = {(m, b, e) for m, b, e in itertools.product([1.0, 0.8], [math.inf, 2.0], [False, True])}
    assert {(p.visual_keep_mass, p.beam_margin, p.early_exit) for p in grid} == expected


def test_noisy_near_ties_choose_the_point_that_keeps_more_quality():
    """Two eligible points whose batch-1 timings differ by less than the tolerance tie on speed: the one that keeps
    more quality wins whichever of them a rerun's timing noise makes faster."""
    for fast, slow in ((5.0, 5.1), (5.1, 5.0)):
        points = synthetic_points([(0.500, 40.0, 10.0), (0.497, 39.7, fast), (0.500, 39.95, slow), (0.49, 39.0, 2.0)])
        assert choose_point(points, 0.01, latency_key="batch1_p50_ms", latency_tolerance=0.05) == 2
    assert choose_point(points, 0.01, latency_key="batch1_p50_ms") == 2 and choose_point(synthetic_points(
        [(0.500, 40.0, 10.0), (0.497, 39.7, 5.0), (0.500, 39.95, 5.1)]), 0.01, latency_key="batch1_p50_ms") == 1  # no tolerance: the fastest


def test_the_bootstrap_bound_keeps_out_a_point_whose_loss_the_sample_cannot_rule_out():
    """Loss point estimates within 1 % but with one noisy metric: eligibility on the upper end of the paired bootstrap
    interval keeps it out; identical lists have a bound of exactly 0."""
    rng = np.random.default_rng(0)
    base_hr = (rng.random(400) < 0.8).astype(float)
    same = base_hr.copy()
    noisy = base_hr.copy()
    noisy[rng.choice(np.flatnonzero(base_hr == 1), 22, replace=False)] = 0.0  # loses 22 hits, gains 18: a point loss of
    noisy[rng.choice(np.flatnonzero(base_hr == 0), 18, replace=False)] = 1.0  # about 1 %, an upper bound far above it
    orders = rng.random(400)
    points = [{"quality": {"hr@10": v.mean(), "sim_orders_per_1k": 1e3 * orders.mean()}, "latency": {"batch1_p50_ms": ms},
               "values": {"hr@10": v, "sim_orders_per_1k": 1e3 * orders}} for v, ms in ((base_hr, 10.0), (same, 6.0), (noisy, 4.0))]
    score_points(points, ["hr@10", "sim_orders_per_1k"])
    assert points[1]["loss_hi"] == {"hr@10": 0.0, "sim_orders_per_1k": 0.0}
    assert points[2]["loss"]["hr@10"] < 0.02 < points[2]["loss_hi"]["hr@10"]
    assert choose_point(points, 0.02, latency_key="batch1_p50_ms") == 2  # the point estimate lets it in
    assert choose_point(points, 0.02, latency_key="batch1_p50_ms", bound=True) == 1  # the bound does not


def test_knobs_a_geometric_model_never_reads_leave_the_grid():
    """Without its decoder a geometric model reads neither visual tokens nor early exit: the grid keeps only the
    points that decode differently (the margin and the widths), instead of ties that timing noise would choose among."""
    from types import SimpleNamespace

    from onevision.generative.calibrate import effective_config

    cfg = load_config(DEFAULT_PARAMS, overrides=["pruning.visual_keep_mass=[1.0,0.75]", "pruning.beam_margin=[null,3.0]",
                                              "pruning.level_beam_widths=[null,[16,64]]", "pruning.early_exit=[false,true]"])
    geo = SimpleNamespace(cfg=SimpleNamespace(geo_levels=2), learned_weight=torch.zeros(()))
    grid = sweep_grid(cfg.pruning, geo)
    assert grid[0] == NO_PRUNING and len(grid) == 4  # none, m3, w16,64, m3+w16,64
    assert all(p.visual_keep_mass == 1.0 and not p.early_exit for p in grid)
    geo.learned_weight.fill_(1.0)  # with the decoder on, visual tokens shorten its context: they count again
    assert len(sweep_grid(cfg.pruning, geo)) == 8
    assert effective_config(PruningConfig(early_exit=True), geo) == NO_PRUNING
    assert len(sweep_grid(cfg.pruning)) == 16  # the autoregressive decoder reads every knob
