"""ECPO and its rewards: the loss and reward functions on their own (fast), then a small real run
on the trained model (slow): the P-Score heads rank held-out interactions, RL stops and resumes,
its checkpoint is chosen on the valid split, the run serves RL only where it beat SFT there, and
constrained recommendations stay 100% legal."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from rl.ecpo import ecpo_loss
from rl.pscore import auc
from rl.rewards import business_rule, format_selection, group_advantages


def test_ecpo_caps_negative_advantage_ratios_but_keeps_their_gradient():
    eps, delta = 0.2, 0.1
    logp_old = torch.zeros(1)
    # a negative-advantage sample whose probability grew 10x under the new policy
    logp = torch.tensor([math.log(10.0)], requires_grad=True)
    loss = ecpo_loss(logp, logp_old, torch.tensor([-1.0]), eps, delta)
    assert loss.item() == pytest.approx(1 + eps + delta)  # not 10: the early clip bounds it
    loss.backward()
    assert logp.grad.item() == pytest.approx(1 + eps + delta)  # and the gradient still pushes it down
    # a positive-advantage sample beyond 1 + eps is clipped as in PPO: no gradient
    logp = torch.tensor([math.log(2.0)], requires_grad=True)
    ecpo_loss(logp, logp_old, torch.tensor([1.0]), eps, delta).backward()
    assert logp.grad.item() == 0.0
    # on-policy (ratio 1) it is the plain policy gradient -A * grad log pi
    logp = torch.zeros(2, requires_grad=True)
    ecpo_loss(logp, torch.zeros(2), torch.tensor([0.5, -0.5]), eps, delta).backward()
    assert logp.grad.tolist() == pytest.approx([-0.25, 0.25])


def test_group_advantages_are_normalised():
    a = group_advantages(np.array([1.0, 2.0, 3.0, 6.0]))
    assert a.mean() == pytest.approx(0.0) and a.std() == pytest.approx(1.0)
    assert (group_advantages(np.ones(4)) == 0).all()


def test_business_rule_damps_the_flagged_class_only_past_the_threshold():
    base = lambda history, items: np.ones(len(items))  # noqa: E731
    rule = business_rule(base, flagged={1, 2}, threshold=0.5, alpha=0.25)
    assert rule([], [1, 3, 4, 5]).tolist() == [1, 1, 1, 1]  # share 0.25: untouched
    assert rule([], [1, 2, 3, 4, 5]).tolist() == [1, 1, 1, 1, 1]  # share 0.4
    assert rule([], [1, 2, 2, 3]).tolist() == [0.25, 0.25, 0.25, 1]  # share 0.75: damped
    assert business_rule(base, {1}, 0.0, 1.0)([], [1, 1]).tolist() == [1, 1]  # alpha 1 = no rule


def test_format_selection_picks_k_random_legal_samples():
    legal = [True, False, True, True, False, True]
    rng = np.random.default_rng(0)
    picks = {tuple(format_selection(legal, 2, rng)) for _ in range(50)}
    assert all(len(p) == 2 and all(legal[i] for i in p) for p in picks)
    assert len(picks) > 1  # random, not always the same (top-k would be)
    assert format_selection([False, True], 4, rng) == [1]


def test_auc():
    assert auc(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert auc(np.array([0.1, 0.9, 0.4, 0.3]), np.array([1, 0, 1, 0])) == 0.25


@pytest.mark.slow
def test_ecpo_is_chosen_on_the_valid_split_resumes_and_keeps_legality(trained_run):
    from eval.rl_report import format_rl_table, run_rl_eval
    from rl.served import served_model_dir
    from rl.stage import run_pscore, run_rl
    from thinkrec.config import PScoreConfig, RLConfig

    run, _ = trained_run
    pscore = run_pscore(PScoreConfig(pscore_epochs=2), run)
    print(pscore)
    assert pscore["auc"]["watch"] > 0.8
    assert pscore["auc_among_positives"]["like"] > 0.6 and pscore["auc_among_positives"]["love"] > 0.6

    cfg = RLConfig(rl_steps=8, users_per_step=4, rl_eval_users=16, rl_select_users=16, rl_save_steps=4)
    # stopped after 4 steps, then resumed from that checkpoint to 8
    run_rl(dataclasses.replace(cfg, rl_steps=4), run)
    summary = run_rl(cfg, run)
    assert summary["resumed_from"] == 4
    log = json.loads((run.path / "rl" / "log.json").read_text())
    assert [h["step"] for h in log["steps"]] == list(range(1, 9))
    assert [v["step"] for v in log["valid"]] == [0, 4, 8]  # step 0: the SFT model itself
    assert (run.path / "rl" / "reward.png").stat().st_size > 1000
    # the beam groups of train users hold their real next item often enough for the hit reward to act
    assert np.mean([h["group_hit_rate"] for h in log["steps"]]) > 0.1
    # the model written is the best RL checkpoint on the valid split; it is served only if it beats SFT there
    sft_v, best = summary["valid"]["sft"], summary["valid"]["model"]
    assert best == max(
        log["valid"][1:], key=lambda v: (v["pscore@10"] >= sft_v["pscore@10"], v["ndcg@10"], v["pscore@10"])
    )
    better = best["ndcg@10"] > sft_v["ndcg@10"] and best["pscore@10"] >= sft_v["pscore@10"]
    assert summary["served"]["model"] == ("rl/model" if better else "sft/model"), summary
    assert served_model_dir(run) == run.path / summary["served"]["model"]
    report = run_rl_eval(cfg, run)
    print(format_rl_table(report))
    before, after = report["models"]["sft"], report["models"]["rl"]
    assert report["users"] == 16 and report["served"]["model"] == summary["served"]["model"]
    assert after["valid"]["model"] == best
    assert before["constrained_legality"] == after["constrained_legality"] == 1.0


@pytest.mark.slow
def test_reasoning_rl_rolls_out_rationales_is_chosen_reasoning_first_and_never_served(trained_run):
    from eval.reasoning_report import format_reasoning_table, run_reasoning_eval
    from eval.rl_report import rl_runs
    from rl.stage import run_pscore, run_rl
    from thinkrec.config import PScoreConfig, RLConfig

    run, _ = trained_run
    if "pscore" not in run.manifest()["stages"]:
        run_pscore(PScoreConfig(pscore_epochs=2), run)
    served_before = run.manifest()["stages"].get("served")
    cfg = RLConfig(reasoning=True, rl_name="rl_reason", rl_steps=2, users_per_step=2, group_size=2,
                   rl_eval_users=8, rl_select_users=8, rl_save_steps=2, think_tokens=24)  # fmt: skip
    summary = run_rl(cfg, run)
    log = json.loads((run.path / "rl_reason" / "log.json").read_text())
    assert [h["step"] for h in log["steps"]] == [1, 2] and all(0 <= h["well_formed"] <= 1 for h in log["steps"])
    # chosen on the valid split asked reasoning-first; never a candidate for serving or the direct report
    assert "valid" not in summary and "well_formed_rationale" in summary["valid_reasoning"]["model"]
    assert run.manifest()["stages"].get("served") == served_before and "rl_reason" not in rl_runs(run)
    report = run_reasoning_eval(cfg, run)
    print(format_reasoning_table(report))
    assert report["users"] == 8 and set(report["models"]) == {"sft", "rl_reason"}
    for modes in report["models"].values():
        assert set(modes) == {"direct", "reasoning_first"}
        assert all(m["constrained_legality"] == 1.0 for m in modes.values())
    assert json.loads((run.path / "eval" / "reasoning_report.json").read_text())["rl"]["steps"] == 2


def test_branched_prompt_logprobs_equal_full_teacher_forcing():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rl.ecpo import sequence_logprobs

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    # rows of several lengths (a rationale before the SID): the padding of the short ones counts nothing
    rows, codes = [0, 0, 1, 1, 1], [[30, 31, 32], [33, 31, 30, 35, 36], [30, 30, 30], [34, 35, 36, 37], [31]]
    fast = sequence_logprobs(model, prompts, rows, codes, pad_id=0)
    for i, (r, c) in enumerate(zip(rows, codes, strict=True)):
        ids = torch.tensor([prompts[r] + c])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompts[r]) - 1 : -1], -1)
        assert fast[i].item() == pytest.approx(logp.gather(1, torch.tensor(c).unsqueeze(1)).sum().item(), abs=1e-4)
    fast.sum().backward()  # the gradient reaches the weights through the shared prompt pass too
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_pscore_heads_and_the_business_rule_come_from_the_data_set_config():
    from rl.pscore import default_weights, feedback_heads, head_labels
    from rl.stage import flagged_items
    from thinkrec.data import Dataset, Item
    from thinkrec.errors import ThinkRecError

    rating = feedback_heads({"kind": "rating", "like": 4, "love": 5}, "watch")
    assert [h.name for h in rating] == ["watch", "like", "love"]
    assert default_weights(rating) == {"watch": 0.5, "like": 0.3, "love": 0.2}
    assert head_labels(4.0, rating) == [1.0, 1.0, 0.0]
    events = feedback_heads({"kind": "events", "events": {"view": 1, "cart": 2, "purchase": 3}}, "buy")
    assert [h.name for h in events] == ["buy", "cart", "purchase"] and head_labels(1.0, events) == [1.0, 0.0, 0.0]
    assert default_weights(events) == {"buy": 0.5, "cart": 0.25, "purchase": 0.25}
    implicit = feedback_heads({"kind": "implicit"}, "read")
    assert [h.name for h in implicit] == ["read"] and default_weights(implicit) == {"read": 1.0}

    items = [
        Item(0, "a", "A", "", ["Tea"], {"category": ["Tea"], "brand": "House", "price": 12.0}),
        Item(1, "b", "B", "", ["Coffee"], {"category": ["Coffee"], "brand": "Acme", "price": 60.0}),
    ]
    ds = Dataset("shop", items, [])
    schema = {"rules": {"flagged": {"attribute": "brand", "value": "House", "above": None}}}
    assert flagged_items(ds, "", schema) == {0}  # the config's rule
    assert flagged_items(ds, "price>50", schema) == {1} and flagged_items(ds, "category=Coffee", None) == {1}
    assert flagged_items(ds, "none", schema) == set() and flagged_items(ds, "", None) == set()
    for spec, message in (("colour=red", "no item attribute"), ("brand=Nope", "names no item"),
                          ("price>cheap", "not a number"), ("brand", "attribute=value")):  # fmt: skip
        with pytest.raises(ThinkRecError, match=message):
            flagged_items(ds, spec, schema)
