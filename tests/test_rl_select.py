"""What RL trains on and which model a run serves: the hit/rank reward, the three disjoint user
sets, the step's (history, target) pairs drawn from train parts only, and the served-model choice
by the recorded valid metric (fast: no model is loaded)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from rl.rewards import hit_rank_reward
from rl.served import SERVED, candidates, choose, record_served, served_model_dir, started_from
from rl.stage import rl_users, select_users, step_pairs
from thinkrec.config import RLConfig
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir


def test_hit_rank_reward_pays_the_real_item_and_penalises_what_ranks_above_it():
    r = hit_rank_reward([7, 3, 5, 9], target=5, rank_weight=1.0)
    assert r[2] == 1.0
    wrong = r[[0, 1, 3]]
    assert (wrong < 0).all() and wrong[0] < wrong[1] < wrong[2]  # the higher the rank, the heavier
    w = [1 / math.log2(i + 2) for i in range(4)]
    assert r[0] == pytest.approx(-w[0] / sum(w))
    # a group without the real item, or with illegal samples, carries no hit signal
    assert hit_rank_reward([1, 2, None], target=5, rank_weight=1.0).tolist() == [0.0, 0.0, 0.0]
    assert hit_rank_reward([5, 2], target=5, rank_weight=0.0).tolist() == [1.0, 0.0]


def test_user_sets_are_disjoint_and_checked(ml100k):
    cfg = RLConfig()
    train, held = rl_users(ml100k, cfg)
    chooser = select_users(ml100k, cfg)
    assert len(held) == cfg.rl_eval_users and len(chooser) == cfg.rl_select_users
    assert not (set(train) & set(held)) and not (set(train) & set(chooser)) and not (set(held) & set(chooser))
    with pytest.raises(ThinkRecError, match="rl_select_users"):
        rl_users(ml100k, dataclasses.replace(cfg, rl_eval_users=len(ml100k.users)))


def test_step_pairs_never_show_or_target_valid_and_test_items(ml100k):
    rng = np.random.default_rng(0)
    users = list(range(40))
    for _ in range(5):
        histories, targets = step_pairs(ml100k, users, 32, rng)
        for u, h, t in zip(users, histories, targets, strict=True):
            train = ml100k.users[u].train_items()
            pos = len(h)
            assert h == train[:pos] and t == train[pos]  # a prefix of the train part and its next item
            assert pos >= max(1, len(train) - 32)  # within the newest `window` train targets


def test_valid_targets_are_the_users_own_valid_item_after_their_whole_train_part(ml100k):
    users = list(range(10))
    histories, targets = step_pairs(ml100k, users, 32, np.random.default_rng(0), target="valid")
    for u, h, t in zip(users, histories, targets, strict=True):
        assert h == ml100k.users[u].train_items() and t == ml100k.users[u].target_for("valid")
        assert t != ml100k.users[u].target_for("test")


def _run_with(tmp_path, rl_valid: dict, sft_valid: dict, rl_finished: str = "2026-01-02T00:00:00") -> RunDir:
    run = RunDir(tmp_path)
    for folder in ("sft/model", "rl/model", "model_base"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text("{}")
    manifest = {
        "stages": {
            "train": {"finished_at": "2026-01-01T00:00:00", "outputs": {}},
            "rl": {"finished_at": rl_finished, "outputs": {}, "valid": {"sft": sft_valid, "model": rl_valid}},
        }
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_served_model_is_the_best_by_the_valid_metric_and_never_a_worse_one(tmp_path):
    sft = {"ndcg@10": 0.050, "pscore@10": 0.55}
    run = _run_with(tmp_path / "better", {"ndcg@10": 0.060, "pscore@10": 0.56}, sft)
    assert served_model_dir(run) == run.path / "sft" / "model"  # nothing recorded yet: never RL blindly
    entry = record_served(run)
    assert entry["model"] == "rl/model" and "0.0600 > sft 0.0500" in entry["why"]
    assert run.manifest()["stages"][SERVED]["model"] == "rl/model"
    assert served_model_dir(run) == run.path / "rl" / "model"

    worse = _run_with(tmp_path / "worse", {"ndcg@10": 0.045, "pscore@10": 0.60}, sft)
    entry = record_served(worse)
    assert entry["model"] == "sft/model" and "no RL model beats sft" in entry["why"]
    assert served_model_dir(worse) == worse.path / "sft" / "model"
    # higher NDCG bought with a lower P-Score is not served either
    lower_p = {"sft": {"valid": sft}, "rl": {"valid": {"ndcg@10": 0.07, "pscore@10": 0.50}}}
    assert choose(lower_p)[0] == "sft"
    # an RL run older than the SFT model (SFT re-trained since) is out of the running
    stale = _run_with(tmp_path / "stale", {"ndcg@10": 0.09, "pscore@10": 0.6}, sft, "2025-12-31T00:00:00")
    assert record_served(stale) == {} and served_model_dir(stale) == stale.path / "sft" / "model"


def test_served_fallback_is_the_model_rl_started_from(tmp_path):
    """`rl --rl-init sft_act`: the valid comparison was against sft_act, so when RL loses the run
    serves sft_act (not the older `sft`), and an RL run older than sft_act is out of the running."""
    sft = {"ndcg@10": 0.050, "pscore@10": 0.55}
    run = _run_with(tmp_path, {"ndcg@10": 0.045, "pscore@10": 0.56}, sft)
    (tmp_path / "sft_act" / "model").mkdir(parents=True)
    (tmp_path / "sft_act" / "model" / "config.json").write_text("{}")
    manifest = run.manifest()
    manifest["stages"]["train_sft_act"] = {"finished_at": "2026-01-01T12:00:00", "outputs": {}}
    manifest["stages"]["rl"]["config"] = {"rl_init": "sft_act"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    entry = record_served(run)
    assert entry["model"] == "sft_act/model" and entry["name"] == "sft_act", entry
    assert "no RL model beats sft_act" in entry["why"]
    assert served_model_dir(run) == tmp_path / "sft_act" / "model"
    assert started_from(run) == "sft_act"  # rl-eval's base row, whatever flags it is given
    # sft_act re-trained after the RL run: that RL run compared against a model that is gone
    manifest["stages"]["train_sft_act"]["finished_at"] = "2026-01-03T00:00:00"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert candidates(run) == {} and started_from(run) is None
