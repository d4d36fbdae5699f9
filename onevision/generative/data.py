"""From the logged tables to the generative model's examples: user histories, SFT targets, DPO pairs.

Pure functions on DataFrames and arrays (the stages do the file IO), so the
tests build them from a handful of rows. Conventions:

* an *event* is one (query, item) the user clicked (``ACTION_CLICK``) or
  ordered (``ACTION_ORDER``; an order always has its click, the event keeps
  the stronger action);
* a query's *history* is the user's ``H`` most recent events strictly before
  the query's timestamp, newest first, taken from the events given (the stages
  pass TRAIN-split events only, so no validation or test behaviour leaks in).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from onevision.generative.model import ACTION_CLICK, ACTION_ORDER, ACTION_PAD
from onevision.generative.train import ContextRows, PreferencePairs, SIDExamples
from onevision.generative.trie import SIDTrie

PAIR_TYPES = ("order>click", "order>skip", "click>skip")


def interaction_events(interactions: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    """``DataFrame(query_id, user_id, ts, item_id, action)``: one row per (query, item), order beats click."""
    acts = interactions[["query_id", "item_id", "action"]].copy()
    acts["action"] = np.where(acts["action"].astype(str).to_numpy() == "order", ACTION_ORDER, ACTION_CLICK)
    acts = acts.groupby(["query_id", "item_id"], as_index=False, sort=True)["action"].max()
    events = acts.merge(queries[["query_id", "user_id", "ts"]], on="query_id", how="inner", validate="many_to_one")
    events["ts_ns"] = events["ts"].astype("int64")
    return events.sort_values(["user_id", "ts_ns", "query_id", "item_id"], kind="mergesort").reset_index(drop=True)


def histories_before(events: pd.DataFrame, user_ids: np.ndarray, ts_ns: np.ndarray, history_len: int) -> tuple[np.ndarray, np.ndarray]:
    """For each (user, time): the ``history_len`` latest events strictly earlier, newest first.

    Returns ``item_ids (Q, H)`` (-1 pads) and ``actions (Q, H)`` (``ACTION_PAD`` pads).
    """
    Q, H = len(user_ids), history_len
    items = np.full((Q, H), -1, dtype=np.int64)
    actions = np.full((Q, H), ACTION_PAD, dtype=np.int64)
    if H == 0 or events.empty or Q == 0:
        return items, actions
    ev_user = events["user_id"].to_numpy(np.int64)
    ev_ts = events["ts_ns"].to_numpy(np.int64)
    ev_item = events["item_id"].to_numpy(np.int64)
    ev_action = events["action"].to_numpy(np.int64)
    users, starts = np.unique(ev_user, return_index=True)  # events are sorted by user, then time
    ends = np.append(starts[1:], len(ev_user))
    user_ids, ts_ns = np.asarray(user_ids, np.int64), np.asarray(ts_ns, np.int64)
    slot = np.searchsorted(users, user_ids).clip(max=len(users) - 1)
    known = users[slot] == user_ids
    pos = np.zeros(Q, dtype=np.int64)  # one past the last event before ts, in global event index
    lo = np.where(known, starts[slot], 0)
    for j in np.unique(slot[known]):  # one searchsorted per user: events of a user are time-sorted
        rows = np.flatnonzero(known & (slot == j))
        pos[rows] = starts[j] + np.searchsorted(ev_ts[starts[j] : ends[j]], ts_ns[rows], side="left")
    idx = pos[:, None] - 1 - np.arange(H)[None, :]  # (Q, H) newest first
    valid = known[:, None] & (idx >= lo[:, None])
    idx = np.where(valid, idx, 0)
    items[valid] = ev_item[idx][valid]
    actions[valid] = ev_action[idx][valid]
    return items, actions


def latest_history(events: pd.DataFrame, history_len: int) -> pd.DataFrame:
    """Each user's ``history_len`` most recent events: ``DataFrame(user_id, slot, item_id, action)``, slot 0 newest."""
    if events.empty or history_len == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in ("user_id", "slot", "item_id", "action")})
    ordered = events.sort_values(["user_id", "ts_ns", "query_id", "item_id"], ascending=[True, False, False, False], kind="mergesort")
    ordered = ordered.assign(slot=ordered.groupby("user_id").cumcount())
    out = ordered[ordered["slot"] < history_len][["user_id", "slot", "item_id", "action"]]
    return out.astype("int64").reset_index(drop=True)


def history_table(user_history: pd.DataFrame, user_rows: np.ndarray, n_rows: int, history_len: int, trie: SIDTrie) -> tuple[torch.Tensor, torch.Tensor]:
    """Serving context per user row: ``history (n_rows, H, L)`` SIDs and ``action (n_rows, H)``; row 0 stays empty.

    ``user_rows`` gives the model row of each ``user_history`` line.
    """
    L = trie.n_levels
    history = torch.full((n_rows, history_len, L), -1, dtype=torch.long)
    action = torch.full((n_rows, history_len), ACTION_PAD, dtype=torch.long)
    if len(user_history) and history_len:
        keep = (user_rows > 0) & (user_history["slot"].to_numpy() < history_len)
        rows = torch.from_numpy(user_rows[keep])
        slots = torch.from_numpy(user_history["slot"].to_numpy(np.int64)[keep])
        sids = trie.sid_of(user_history["item_id"].to_numpy(np.int64)[keep])  # (n, L), -1 rows: unknown item
        ok = sids[:, 0] >= 0
        history[rows[ok], slots[ok]] = sids[ok]
        action[rows[ok], slots[ok]] = torch.from_numpy(user_history["action"].to_numpy(np.int64)[keep])[ok]
    return history, action


def context_rows(image_idx: np.ndarray, user_rows: np.ndarray, hist_items: np.ndarray, hist_actions: np.ndarray, trie: SIDTrie) -> ContextRows:
    """Per-example context from image rows, user rows and history item ids (items unknown to the trie pad)."""
    E, H = hist_items.shape
    sids = trie.sid_of(hist_items.reshape(-1)).view(E, H, trie.n_levels)  # (E, H, L)
    action = torch.from_numpy(hist_actions.astype(np.int64)).masked_fill(sids[..., 0] < 0, ACTION_PAD)
    return ContextRows(torch.tensor(np.asarray(image_idx, np.int64)), torch.tensor(np.asarray(user_rows, np.int64)), sids, action)


def target_examples(rows: ContextRows, item_ids: np.ndarray, trie: SIDTrie, weight: float = 1.0) -> SIDExamples:
    """Context row i -> the SID of ``item_ids[i]`` (rows whose item has no SID are dropped)."""
    target = trie.sid_of(item_ids)  # (E, L)
    keep = target[:, 0] >= 0
    return SIDExamples(rows.select(keep), target[keep], torch.full((int(keep.sum()),), float(weight)))


def anonymous_examples(image_idx: np.ndarray, item_ids: np.ndarray, trie: SIDTrie, history_len: int, weight: float = 1.0) -> SIDExamples:
    """Visual-prior examples: image -> its item's SID, no user context (stage pretrain)."""
    rows = ContextRows.anonymous(torch.tensor(np.asarray(image_idx, np.int64)), history_len, trie.n_levels)
    return target_examples(rows, item_ids, trie, weight)


def personalised_examples(
    query_rows: ContextRows,
    query_ids: np.ndarray,
    *,
    events: pd.DataFrame,
    trie: SIDTrie,
    click_weight: float,
    order_weight: float,
) -> SIDExamples:
    """SFT examples: (query context) -> SID of each item the user clicked or ordered, weighted by action.

    ``query_rows[i]`` is the context of query ``query_ids[i]``; events of other queries are ignored.
    """
    position = pd.Series(np.arange(len(query_ids)), index=np.asarray(query_ids, np.int64))
    ev = events[events["query_id"].isin(position.index)]
    which = torch.tensor(position.loc[ev["query_id"].to_numpy()].to_numpy(np.int64))
    target = trie.sid_of(ev["item_id"].to_numpy(np.int64))
    weight = torch.from_numpy(np.where(ev["action"].to_numpy() == ACTION_ORDER, order_weight, click_weight).astype(np.float32))
    keep = (target[:, 0] >= 0) & (weight > 0)
    return SIDExamples(query_rows.select(which[keep]), target[keep], weight[keep])


def preference_pairs(
    query_rows: ContextRows,
    query_ids: np.ndarray,
    *,
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    trie: SIDTrie,
    pair_types: list[str] | tuple[str, ...],
    skip_positions: int,
    max_pairs_per_query: int,
    seed: int,
) -> PreferencePairs:
    """DPO pairs per query from its log: ordered > clicked-only > shown-but-skipped (above ``skip_positions``).

    At most ``max_pairs_per_query`` pairs per query, sampled uniformly (seeded) from the enabled types.
    """
    unknown = set(pair_types) - set(PAIR_TYPES)
    if unknown:
        raise ValueError(f"unknown pair types {sorted(unknown)}; use {PAIR_TYPES}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD90]))
    qids = np.asarray(query_ids, np.int64)
    position = {int(q): i for i, q in enumerate(qids)}
    shown = impressions[impressions["query_id"].isin(position) & (impressions["position"] < skip_positions)]
    shown_by_q = shown.groupby("query_id")["item_id"].apply(list).to_dict()
    ev = events[events["query_id"].isin(position)]
    acted = ev.groupby("query_id")[["item_id", "action"]].apply(lambda g: dict(zip(g["item_id"], g["action"], strict=True))).to_dict()
    which, chosen, rejected = [], [], []
    for q, actions in acted.items():
        orders = [i for i, a in actions.items() if a == ACTION_ORDER]
        clicks = [i for i, a in actions.items() if a == ACTION_CLICK]
        skips = [i for i in shown_by_q.get(q, []) if i not in actions]
        candidates = []
        if "order>click" in pair_types:
            candidates += [(w, r) for w in orders for r in clicks]
        if "order>skip" in pair_types:
            candidates += [(w, r) for w in orders for r in skips]
        if "click>skip" in pair_types:
            candidates += [(w, r) for w in clicks for r in skips]
        if not candidates:
            continue
        pick = rng.choice(len(candidates), size=min(max_pairs_per_query, len(candidates)), replace=False)
        for j in np.sort(pick):
            which.append(position[int(q)])
            chosen.append(candidates[j][0])
            rejected.append(candidates[j][1])
    which_t = torch.tensor(which, dtype=torch.long)
    c, r = trie.sid_of(np.array(chosen, np.int64)), trie.sid_of(np.array(rejected, np.int64))
    keep = (c[:, 0] >= 0) & (r[:, 0] >= 0) if len(which) else torch.zeros(0, dtype=torch.bool)
    L = trie.n_levels
    return PreferencePairs(query_rows.select(which_t[keep]), c[keep].view(-1, L), r[keep].view(-1, L))
