"""A seeded shopper simulator: the offline stand-in for the paper's A/B test.

The demo dataset draws its clicks and orders from :class:`UserSimulator`, and
evaluation scores any ranked list with the same model, so "simulated CTR /
orders" of OneVision and MCA are comparable on the same test queries.

The model (position-based click model with a personal appeal term). A user
``u`` photographed product ``t`` and is shown item ``i`` at 0-based position
``k``:

* examination ``E(k) = 1 / log2(k + 2)`` — the DCG discount: position 0 is
  always looked at, position 9 about 29 % of the time;
* relevance ``R(i, t)``: ``relevance_exact`` (1.0) when ``i == t``,
  ``relevance_category`` (0.1) for another item of ``t``'s category,
  ``relevance_other`` (0.01) otherwise — the shopper came for *that* product;
* taste logit ``T(u, i) = category_weight * clip(log(C * a_u[c_i]), -3, log C)
  + brand_weight_u * [brand_i in favourites_u]
  - price_sensitivity_u * log(price_i / median price of c_i)``, where ``a_u``
  is the user's category affinity over the ``C`` categories (uniform affinity
  gives 0), and the appeal ``A(u, i) = sigmoid(appeal_bias + T(u, i))``;

``P(click) = E(k) * R(i, t) * A(u, i)`` and, given a click,
``P(order | click) = order_base * O(i, t) * sigmoid(order_bias + T(u, i) -
order_price_weight * price_sensitivity_u * max(0, log(price_i / median)))`` with order
relevance ``O`` = 1 for the exact product, ``order_relevance_category`` for the
same category and ``order_relevance_other`` otherwise: buying is more price
sensitive than clicking. An order always comes with a click on the same item.

Ground-truth tastes come from the ``user_tastes`` table, which only the
simulator reads; models learn tastes from the logged clicks and orders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from onevision.data.augment import derive_rng

EMPTY_SLOT = -1  # a ranked list may be shorter than K: pad with -1, which scores 0


@dataclasses.dataclass(frozen=True)
class SimulatorParams:
    """Knobs of the click/order model (defaults give a few % CTR per impression)."""

    relevance_exact: float = 1.0  # the photographed product itself
    relevance_category: float = 0.1  # same category, another product
    relevance_other: float = 0.01  # another category
    category_weight: float = 0.75  # weight of the log category affinity in the taste logit
    category_clip: float = 3.0  # floor of the log affinity term (a disliked category is not -inf)
    appeal_bias: float = 0.0
    order_base: float = 0.5  # ceiling of P(order | click) for the exact product
    order_bias: float = -0.5
    order_price_weight: float = 1.5  # extra price aversion when paying
    order_relevance_category: float = 0.4
    order_relevance_other: float = 0.1


def examination(positions: np.ndarray | int) -> np.ndarray:
    """Probability that a user looks at 0-based position ``k``: ``1 / log2(k + 2)``."""
    return 1.0 / np.log2(np.asarray(positions, dtype=np.float64) + 2.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class UserSimulator:
    """Seeded shopper model: click/order probabilities, expected outcomes and sampled logs.

    Build it with :meth:`from_tables` from the ``items`` and ``user_tastes``
    tables. All methods take aligned arrays: ``user_ids (Q,)``,
    ``target_item_ids (Q,)`` (the photographed product of each query) and
    ``ranked_item_ids (Q, K)`` (the list shown, best first; ``-1`` marks an
    empty slot). Unknown ids raise a ``ValueError`` that names them.
    """

    def __init__(
        self,
        *,
        item_ids: np.ndarray,
        item_category: np.ndarray,
        item_brand: Sequence[str],
        item_price: np.ndarray,
        user_ids: np.ndarray,
        category_affinity: np.ndarray,
        favorite_brands: Sequence[Sequence[str]],
        brand_weight: np.ndarray,
        price_sensitivity: np.ndarray,
        params: SimulatorParams | None = None,
        seed: int = 0,
    ) -> None:
        self.params = params or SimulatorParams()
        self.seed = int(seed)
        self._rng = derive_rng(self.seed, "simulator")

        item_ids = np.asarray(item_ids, dtype=np.int64)
        order = np.argsort(item_ids, kind="stable")
        self._item_ids = item_ids[order]  # sorted, for searchsorted lookups
        if len(self._item_ids) == 0 or (np.diff(self._item_ids) == 0).any():
            raise ValueError("item ids must be non-empty and unique")
        self._category = np.asarray(item_category, dtype=np.int64)[order]
        self._price = np.asarray(item_price, dtype=np.float64)[order]
        if not np.all(np.isfinite(self._price) & (self._price > 0)):
            raise ValueError("item prices must be finite and > 0")
        brands = np.asarray(item_brand, dtype=object)[order]
        self.brand_names, self._brand = np.unique(brands.astype(str), return_inverse=True)

        affinity = np.asarray(category_affinity, dtype=np.float64)  # (U, C)
        if affinity.ndim != 2:
            raise ValueError(f"category_affinity must be (users, categories), got shape {affinity.shape}")
        self.n_categories = affinity.shape[1]
        if self._category.min() < 0 or self._category.max() >= self.n_categories:
            raise ValueError(f"item categories must lie in 0..{self.n_categories - 1} (the affinity length)")

        user_ids = np.asarray(user_ids, dtype=np.int64)
        uorder = np.argsort(user_ids, kind="stable")
        self._user_ids = user_ids[uorder]
        if len(self._user_ids) == 0 or (np.diff(self._user_ids) == 0).any():
            raise ValueError("user ids must be non-empty and unique")
        p = self.params
        # (U, C) category term of the taste logit, precomputed
        log_aff = np.log(np.maximum(affinity[uorder] * self.n_categories, 1e-12))
        self._category_term = p.category_weight * np.clip(log_aff, -p.category_clip, np.log(self.n_categories))
        self._brand_weight = np.asarray(brand_weight, dtype=np.float64)[uorder]
        self._price_sensitivity = np.asarray(price_sensitivity, dtype=np.float64)[uorder]
        # (U, B) favourite-brand mask; favourites absent from the catalog simply never match
        brand_code = {name: j for j, name in enumerate(self.brand_names)}
        self._favorite = np.zeros((len(self._user_ids), len(self.brand_names)), dtype=bool)
        fav_sorted = [favorite_brands[j] for j in uorder]
        for row, favs in enumerate(fav_sorted):
            for name in favs:
                if name in brand_code:
                    self._favorite[row, brand_code[name]] = True

        # log(price / category median): > 0 is pricier than usual for its category
        medians = np.ones(self.n_categories)
        for c in range(self.n_categories):
            in_c = self._category == c
            if in_c.any():
                medians[c] = np.median(self._price[in_c])
        self.category_median_price = medians
        self._log_price_ratio = np.log(self._price / medians[self._category])

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tables(
        cls,
        items: pd.DataFrame,
        user_tastes: pd.DataFrame,
        seed: int = 0,
        params: SimulatorParams | None = None,
    ) -> UserSimulator:
        """Build from the canonical ``items`` and ``user_tastes`` tables."""
        affinity = np.stack([np.asarray(a, dtype=np.float64) for a in user_tastes["category_affinity"]])
        return cls(
            item_ids=items["item_id"].to_numpy(np.int64),
            item_category=items["category"].to_numpy(np.int64),
            item_brand=items["brand"].astype(str).tolist(),
            item_price=items["price"].to_numpy(np.float64),
            user_ids=user_tastes["user_id"].to_numpy(np.int64),
            category_affinity=affinity,
            favorite_brands=[list(f) for f in user_tastes["favorite_brands"]],
            brand_weight=user_tastes["brand_weight"].to_numpy(np.float64),
            price_sensitivity=user_tastes["price_sensitivity"].to_numpy(np.float64),
            params=params,
            seed=seed,
        )

    @property
    def item_ids(self) -> np.ndarray:
        return self._item_ids.copy()

    @property
    def user_ids(self) -> np.ndarray:
        return self._user_ids.copy()

    # ------------------------------------------------------------------ id lookups

    @staticmethod
    def _lookup(known: np.ndarray, ids: np.ndarray, what: str, allow_empty: bool = False) -> np.ndarray:
        """Row index of each id in the sorted ``known``; -1 for empty slots when allowed."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            if ids.size and not np.all(np.mod(ids, 1) == 0):
                raise ValueError(f"{what} ids must be integers")
            ids = ids.astype(np.int64)
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        found = known[pos] == ids
        empty = (ids == EMPTY_SLOT) if allow_empty else np.zeros(ids.shape, dtype=bool)
        bad = ~found & ~empty
        if bad.any():
            unknown = np.unique(ids[bad])
            shown = ", ".join(str(v) for v in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise ValueError(f"unknown {what} ids ({len(unknown)}): {shown}")
        return np.where(empty & ~found, -1, pos)

    def _check_shapes(self, user_ids, target_item_ids, ranked_item_ids):
        user_ids = np.asarray(user_ids)
        target_item_ids = np.asarray(target_item_ids)
        ranked = np.asarray(ranked_item_ids)
        if ranked.ndim == 1:
            ranked = ranked[None, :]
        if user_ids.ndim != 1 or target_item_ids.shape != user_ids.shape or ranked.ndim != 2 or len(ranked) != len(user_ids):
            raise ValueError(
                "expected user_ids (Q,), target_item_ids (Q,), ranked_item_ids (Q, K); got "
                f"{user_ids.shape}, {target_item_ids.shape}, {ranked.shape}"
            )
        u = self._lookup(self._user_ids, user_ids, "user")  # (Q,)
        t = self._lookup(self._item_ids, target_item_ids, "target item")  # (Q,)
        r = self._lookup(self._item_ids, ranked, "ranked item", allow_empty=True)  # (Q, K), -1 = empty
        return u, t, r

    # ------------------------------------------------------------------ the model

    def _taste(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Taste logit T for user rows ``u`` and item rows ``i`` (broadcast); price term included."""
        return (
            self._category_term[u, self._category[i]]
            + self._brand_weight[u] * self._favorite[u, self._brand[i]]
            - self._price_sensitivity[u] * self._log_price_ratio[i]
        )

    def taste(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Taste logit ``T(u, i)`` for ``user_ids (Q,)`` x ``item_ids (Q, K)`` (or (Q,) pairs)."""
        u = self._lookup(self._user_ids, np.asarray(user_ids), "user")
        i = self._lookup(self._item_ids, np.asarray(item_ids), "item")
        if i.ndim == 2:
            u = u[:, None]
        return self._taste(u, i)

    def taste_matrix(self, user_ids: np.ndarray, item_ids: np.ndarray | None = None) -> np.ndarray:
        """Taste logits of every listed user for every listed item: ``(U, N)``; all items by default."""
        u = self._lookup(self._user_ids, np.asarray(user_ids), "user")[:, None]  # (U, 1)
        i = np.arange(len(self._item_ids)) if item_ids is None else self._lookup(self._item_ids, np.asarray(item_ids), "item")
        return self._taste(u, i[None, :])  # (U, N)

    def appeal(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """``A(u, i) = sigmoid(appeal_bias + T(u, i))``: how much the item pleases the user, 0..1."""
        return _sigmoid(self.params.appeal_bias + self.taste(user_ids, item_ids))

    def probabilities(
        self, user_ids: np.ndarray, target_item_ids: np.ndarray, ranked_item_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(p_click (Q, K), p_order (Q, K))``; ``p_order`` is the joint P(click and order)."""
        u, t, r = self._check_shapes(user_ids, target_item_ids, ranked_item_ids)
        p = self.params
        empty = r < 0  # (Q, K)
        i = np.where(empty, 0, r)  # (Q, K) safe row index; empty slots are zeroed below
        uq = u[:, None]  # (Q, 1)
        exact = i == t[:, None]  # (Q, K)
        same_cat = self._category[i] == self._category[t][:, None]  # (Q, K)
        relevance = np.where(exact, p.relevance_exact, np.where(same_cat, p.relevance_category, p.relevance_other))
        order_rel = np.where(exact, 1.0, np.where(same_cat, p.order_relevance_category, p.order_relevance_other))
        taste = self._taste(uq, i)  # (Q, K)
        k = np.arange(r.shape[1])
        p_click = examination(k)[None, :] * relevance * _sigmoid(p.appeal_bias + taste)
        price_pain = p.order_price_weight * self._price_sensitivity[uq] * np.maximum(self._log_price_ratio[i], 0.0)
        p_order_given_click = p.order_base * order_rel * _sigmoid(p.order_bias + taste - price_pain)
        p_click = np.where(empty, 0.0, p_click)
        return p_click, p_click * p_order_given_click

    def score(
        self, user_ids: np.ndarray, target_item_ids: np.ndarray, ranked_item_ids: np.ndarray
    ) -> dict[str, Any]:
        """Expected outcome of showing each list: the offline A/B-test stand-in.

        Returns ``expected_clicks (Q,)``, ``expected_orders (Q,)``, their
        totals ``clicks`` and ``orders``, per-query means ``clicks_per_query``
        and ``orders_per_query``, ``exact_click_rate`` (mean P(click) on the
        photographed product) and ``n_queries``.
        """
        p_click, p_order = self.probabilities(user_ids, target_item_ids, ranked_item_ids)
        ranked = np.asarray(ranked_item_ids)
        ranked = ranked[None, :] if ranked.ndim == 1 else ranked
        exact = ranked == np.asarray(target_item_ids)[:, None]
        clicks = p_click.sum(axis=1)  # (Q,)
        orders = p_order.sum(axis=1)  # (Q,)
        n = len(clicks)
        return {
            "expected_clicks": clicks,
            "expected_orders": orders,
            "clicks": float(clicks.sum()),
            "orders": float(orders.sum()),
            "clicks_per_query": float(clicks.mean()) if n else 0.0,
            "orders_per_query": float(orders.mean()) if n else 0.0,
            "exact_click_rate": float((p_click * exact).sum() / n) if n else 0.0,
            "n_queries": n,
        }

    def sample(
        self,
        user_ids: np.ndarray,
        target_item_ids: np.ndarray,
        ranked_item_ids: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw concrete ``(clicks (Q, K) bool, orders (Q, K) bool)``; every order has its click.

        ``rng`` defaults to the simulator's own stream (seeded from ``seed``);
        pass one for reproducible draws independent of earlier calls.
        """
        rng = self._rng if rng is None else rng
        p_click, p_order = self.probabilities(user_ids, target_item_ids, ranked_item_ids)
        u = rng.uniform(size=p_click.shape)  # (Q, K)
        clicks = u < p_click
        # one uniform per slot: order iff u < P(click and order) <= P(click), so order implies click
        orders = u < p_order
        return clicks, orders
