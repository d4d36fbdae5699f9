"""Training pieces: DPO loss by hand, SID likelihood and DPO loops on tiny data, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import torch

from onevision.generative.checkpoint import load_checkpoint, save_checkpoint
from onevision.generative.decode import beam_search
from onevision.generative.model import GeneratorConfig, SIDGenerator
from onevision.generative.train import (
    ContextRows,
    ImageBank,
    PreferencePairs,
    SIDExamples,
    dpo_loss,
    evaluate_preferences,
    reference_log_probs,
    token_kl,
    train_dpo,
    train_sid_model,
)
from onevision.generative.trie import SIDTrie

torch.set_num_threads(1)  # tiny models: one thread is faster than two contended ones


def test_dpo_loss_matches_hand_computation():
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.5])
    loss, chosen_reward, rejected_reward = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # rewards: 0.5 * (-1 - -2) = 0.5 and 0.5 * (-3 - -2.5) = -0.25; margin 0.75
    assert chosen_reward.item() == 0.5 and rejected_reward.item() == -0.25
    assert math.isclose(loss.item(), math.log1p(math.exp(-0.75)), rel_tol=1e-6)
    assert math.isclose(loss.item(), 0.386871, rel_tol=1e-5)
    loss.sum().backward()
    # d loss / d log pi(chosen) = -beta * sigmoid(-margin): DPO raises the chosen SID's likelihood
    sig = 1 / (1 + math.exp(0.75))
    assert math.isclose(pc.grad.item(), -0.5 * sig, rel_tol=1e-5)
    assert math.isclose(pr.grad.item(), 0.5 * sig, rel_tol=1e-5)
    # equal rewards: loss log 2
    assert math.isclose(dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1)[0].item(), math.log(2), rel_tol=1e-6)


def tiny_world(n_items: int = 24, seed: int = 0):
    """Items with distinct random 'images' and SIDs over codebooks (4, 3, 2)."""
    g = torch.Generator().manual_seed(seed)
    sizes = (4, 3, 2)
    sids = torch.tensor([[a, b, c] for a in range(4) for b in range(3) for c in range(2)])[:n_items]
    bank = ImageBank(torch.randn(n_items, 4, 8, generator=g), torch.nn.functional.normalize(torch.randn(n_items, 6, generator=g), dim=1))
    trie = SIDTrie(sids.numpy(), np.arange(100, 100 + n_items), sizes)
    cfg = GeneratorConfig(
        codebook_sizes=sizes, token_dim=8, n_visual_tokens=4, embed_dim=6, n_users=2, history_len=2,
        d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, dropout=0.0,
    )
    return bank, trie, sids, cfg


def test_sid_likelihood_training_learns_image_to_sid():
    bank, trie, sids, cfg = tiny_world()
    torch.manual_seed(0)
    model = SIDGenerator(cfg)
    rows = ContextRows.anonymous(torch.arange(len(bank)), cfg.history_len, cfg.n_levels)
    examples = SIDExamples(rows, sids, torch.ones(len(sids)))
    history = train_sid_model(model, bank, examples=examples, epochs=100, batch_size=24, lr=3e-3, warmup_steps=5, seed=0, val=examples)
    assert history[-1]["loss"] < 0.25 * history[0]["loss"]
    assert "val_loss" in history[-1]
    res = beam_search(model, rows.context(bank), trie=trie, beam_width=4, k=1)
    assert (res.item_ids[:, 0] == trie.lookup(sids)).float().mean() > 0.9


def test_dpo_training_moves_preferences_and_reports_kl():
    bank, trie, sids, cfg = tiny_world()
    torch.manual_seed(1)
    reference = SIDGenerator(cfg).eval()
    policy = SIDGenerator(cfg)
    policy.load_state_dict(reference.state_dict())
    n = len(bank)
    rows = ContextRows.anonymous(torch.arange(n), cfg.history_len, cfg.n_levels)
    pairs = PreferencePairs(rows, sids, sids.roll(1, dims=0))  # each image prefers its own SID over a neighbour's
    ref = reference_log_probs(reference, bank, pairs)
    before = evaluate_preferences(policy, bank, pairs=pairs, ref_logps=ref, beta=0.5)
    assert before["preference_accuracy"] == 0.0 and math.isclose(before["loss"], math.log(2), rel_tol=1e-5)
    history = train_dpo(policy, reference, bank=bank, pairs=pairs, beta=0.5, epochs=30, batch_size=24, lr=5e-3, seed=0, val=pairs)
    after = evaluate_preferences(policy, bank, pairs=pairs, ref_logps=ref, beta=0.5)
    assert after["preference_accuracy"] > 0.9 and after["loss"] < before["loss"]
    assert after["policy_ranks_chosen"] > before["policy_ranks_chosen"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert "val_preference_accuracy" in history[-1]
    assert token_kl(policy, reference, bank=bank, rows=rows, sids=sids) > 0
    assert token_kl(reference, reference, bank=bank, rows=rows, sids=sids) < 1e-6
    assert all(not p.requires_grad for p in reference.parameters())


def test_checkpoint_round_trip(tmp_path):
    import pandas as pd

    _, _, _, cfg = tiny_world()
    model = SIDGenerator(cfg).eval()
    history = pd.DataFrame({"user_id": [5, 5], "slot": [0, 1], "item_id": [100, 101], "action": [2, 1]})
    save_checkpoint(tmp_path / "ckpt", model, np.array([5, 9]), history, facts={"stage": "sft"})
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.model.cfg == model.cfg
    for a, b in zip(ckpt.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert ckpt.user_rows(np.array([9, 5, 7, -1])).tolist() == [2, 1, 0, 0]
    assert ckpt.facts["stage"] == "sft" and len(ckpt.user_history) == 2
