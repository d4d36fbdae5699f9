"""Sanity of the seeded shopper simulator (onevision.data.simulator)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onevision.data.simulator import UserSimulator, examination


@pytest.fixture(scope="module")
def sim(tables):
    return UserSimulator.from_tables(tables["items"], tables["user_tastes"], seed=0)


@pytest.fixture(scope="module")
def random_traffic(tables):
    """Random users, targets and shown lists (Q=20,000, K=10): no logging-policy confounding."""
    rng = np.random.default_rng(7)
    items = tables["items"]["item_id"].to_numpy()
    users = rng.choice(tables["users"]["user_id"].to_numpy(), size=20_000)
    targets = rng.choice(items, size=20_000)
    ranked = np.argsort(rng.uniform(size=(20_000, len(items))), axis=1)[:, :10]  # distinct rows (item id = row)
    return users, targets, items[ranked]


def test_examination_falls_with_position():
    e = examination(np.arange(20))
    assert e[0] == 1.0 and np.all(np.diff(e) < 0)


def test_probabilities_are_valid(sim, random_traffic):
    p_click, p_order = sim.probabilities(*random_traffic)
    assert p_click.shape == p_order.shape == random_traffic[2].shape
    assert np.all((0 <= p_order) & (p_order <= p_click) & (p_click <= 1))


def test_exact_item_at_top_beats_a_random_list(sim, random_traffic):
    users, targets, ranked = random_traffic
    with_target = ranked.copy()
    with_target[:, 0] = targets
    random_score = sim.score(users, targets, ranked)
    exact_score = sim.score(users, targets, with_target)
    assert exact_score["clicks"] > 3 * random_score["clicks"]
    assert exact_score["orders"] > 3 * random_score["orders"]
    assert exact_score["exact_click_rate"] > 0.3


def test_expected_clicks_fall_with_the_true_items_position(sim, random_traffic):
    users, targets, ranked = random_traffic
    fillers = ranked[:, :9]
    means = []
    for pos in range(10):
        lists = np.insert(fillers, pos, targets, axis=1)  # (Q, 10) the target at `pos`
        means.append(sim.score(users, targets, lists)["clicks_per_query"])
    assert np.all(np.diff(means) < 0)


def test_clicks_lean_to_the_users_tastes(tables, sim, random_traffic):
    users, targets, ranked = random_traffic
    clicks, _ = sim.sample(users, targets, ranked, rng=np.random.default_rng(1))
    items = tables["items"].set_index("item_id")
    tastes = tables["user_tastes"].set_index("user_id")
    top_cat = tastes["category_affinity"].map(lambda a: int(np.argmax(a))).loc[users].to_numpy()
    in_top = items["category"].to_numpy()[ranked] == top_cat[:, None]  # item ids are 0..N-1
    favs = tastes["favorite_brands"].loc[users].tolist()
    brand = items["brand"].astype(str).to_numpy()[ranked]
    is_fav = np.array([[b in set(f) for b in row] for row, f in zip(brand, favs, strict=True)])
    assert clicks[in_top].mean() > 1.5 * clicks[~in_top].mean()
    assert clicks[is_fav].mean() > 1.3 * clicks[~is_fav].mean()


def test_logged_clicks_lean_to_tastes(tables):
    acts = tables["interactions"]
    imp = tables["impressions"].merge(tables["queries"][["query_id", "user_id"]], on="query_id")
    imp = imp.merge(tables["items"][["item_id", "category", "brand"]], on="item_id")
    tastes = tables["user_tastes"].set_index("user_id")
    top = tastes["category_affinity"].map(lambda a: int(np.argmax(a)))
    imp["in_top"] = imp["category"].to_numpy() == top.loc[imp["user_id"]].to_numpy()
    clicked = acts[acts["action"] == "click"][["query_id", "item_id"]].assign(clicked=True)
    imp = imp.merge(clicked, on=["query_id", "item_id"], how="left")
    imp["clicked"] = imp["clicked"].astype("boolean").fillna(False).astype(bool)
    ctr = imp.groupby("in_top")["clicked"].mean()
    assert ctr[True] > 1.5 * ctr[False]


def test_sample_matches_probabilities_and_orders_need_clicks(sim, random_traffic):
    users, targets, ranked = random_traffic
    ranked = ranked.copy()
    ranked[:, 0] = targets
    p_click, p_order = sim.probabilities(users, targets, ranked)
    clicks, orders = sim.sample(users, targets, ranked, rng=np.random.default_rng(3))
    assert not (orders & ~clicks).any()
    assert abs(clicks.sum() - p_click.sum()) < 4 * np.sqrt(p_click.sum())
    assert abs(orders.sum() - p_order.sum()) < 4 * np.sqrt(p_order.sum()) + 1
    again, _ = sim.sample(users, targets, ranked, rng=np.random.default_rng(3))
    assert (again == clicks).all()


def test_empty_slots_score_zero(sim, random_traffic):
    users, targets, ranked = random_traffic
    padded = ranked.copy()
    padded[:, 5:] = -1
    p_click, p_order = sim.probabilities(users, targets, padded)
    assert (p_click[:, 5:] == 0).all() and (p_order[:, 5:] == 0).all()
    full = sim.score(users, targets, ranked[:, :5])["expected_clicks"]
    np.testing.assert_allclose(sim.score(users, targets, padded)["expected_clicks"], full)


def test_unknown_ids_raise_naming_them(sim, tables):
    user = int(tables["users"]["user_id"].iloc[0])
    item = int(tables["items"]["item_id"].iloc[0])
    with pytest.raises(ValueError, match="99999"):
        sim.score([99999], [item], [[item]])
    with pytest.raises(ValueError, match="88888"):
        sim.score([user], [88888], [[item]])
    with pytest.raises(ValueError, match="77777"):
        sim.score([user], [item], [[item, 77777]])
    with pytest.raises(ValueError, match="expected user_ids"):
        sim.score([user, user], [item], [[item]])


def test_from_tables_survives_parquet(tables, tmp_path, random_traffic):
    from onevision.data.tables import read_tables, write_tables

    write_tables({k: tables[k] for k in ("items", "user_tastes")}, tmp_path)
    back = read_tables(tmp_path, ("items", "user_tastes"))
    sim_back = UserSimulator.from_tables(back["items"], back["user_tastes"])
    sim = UserSimulator.from_tables(tables["items"], tables["user_tastes"])
    np.testing.assert_allclose(sim_back.probabilities(*random_traffic)[0], sim.probabilities(*random_traffic)[0])
    assert isinstance(back["items"], pd.DataFrame)
