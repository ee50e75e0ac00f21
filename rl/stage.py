"""Stages `pscore` (train the reward model) and `rl` (ECPO on top of the SFT model).

The loop is our own rather than TRL's GRPOTrainer: each sample is one item drawn from the SID
trie (constrained sampling with the user's seen items excluded), the format reward needs free
samples of the same prompts, and ECPO's early clip keeps the gradient of a capped ratio, which
TRL's two-sided clipping (a clamp) does not. The loop is short: sample, score, normalise, update.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tqdm import tqdm

from eval.generate import generation_prompt, trie_sample
from model.base import load_causal_lm
from model.collate import LeftPadCollator, answer_loss, encode_chat
from model.plot import plot_loss
from model.train import trained_model_dir
from rl.ecpo import ecpo_loss, sequence_logprobs
from rl.pscore import PScore, train_pscore
from rl.rewards import business_rule, format_selection, group_advantages, preference_reward
from sft_data.prompts import behaviour_prompt
from thinkrec.config import PScoreConfig, RLConfig
from thinkrec.data import Dataset, load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import MODEL_SID_FILE, TokenTrie
from tokenizer_ext.stage import load_index


def item_features(run: RunDir) -> np.ndarray:
    run.require("tokenize", "tokenize")
    return np.load(run.path / "tokenizer" / "item_embeddings.npy")


def run_pscore(cfg: PScoreConfig, run: RunDir) -> dict:
    ds = load_prepared(run)
    scorer, report = train_pscore(ds, item_features(run), cfg)
    out = run.sub("pscore")
    scorer.save(out, cfg)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    run.record("pscore", cfg, {"model": "pscore/pscore.pt", "report": "pscore/report.json"}, report=report)
    return report


def load_pscore(run: RunDir) -> PScore:
    run.require("pscore", "pscore")
    return PScore.load(run.path / "pscore", item_features(run))


def flagged_items(ds: Dataset, genre: str) -> set[int]:
    flagged = {it.idx for it in ds.items if genre in it.genres}
    if not flagged:
        known = sorted({g for it in ds.items for g in it.genres})
        raise ThinkRecError(f"flagged_genre {genre!r} names no item; genres are {known}")
    return flagged


def rl_users(ds: Dataset, cfg: RLConfig) -> tuple[list[int], list[int]]:
    """User indices RL trains on (the first rl_users) and the held-out ones it is judged on."""
    if cfg.rl_users < 1 or cfg.rl_users >= len(ds.users):
        raise ThinkRecError(f"rl_users must be in 1..{len(ds.users) - 1}")
    held = list(range(cfg.rl_users, min(len(ds.users), cfg.rl_users + cfg.rl_eval_users)))
    return list(range(cfg.rl_users)), held


def _check(cfg: RLConfig) -> None:
    if cfg.group_size < 2:
        raise ThinkRecError("group_size must be >= 2 (advantages are normalised within the group)")
    if not 0 < cfg.rule_alpha <= 1 or not 0 <= cfg.rule_threshold <= 1:
        raise ThinkRecError("rule_alpha must be in (0, 1] and rule_threshold in [0, 1]")
    if cfg.epsilon <= 0 or cfg.delta <= 0:
        raise ThinkRecError("epsilon and delta must be > 0")


class Policy:
    """The model being aligned, with what sampling and scoring it needs."""

    def __init__(self, model, tok, trie: TokenTrie, history_len: int, ds: Dataset, index):
        self.model, self.tok, self.trie = model, tok, trie
        self.ds, self.index, self.history_len = ds, index, history_len

    def prompts(self, histories: list[list[int]]) -> list[list[dict]]:
        return [behaviour_prompt(self.ds, self.index, h, self.history_len) for h in histories]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tok(generation_prompt(self.tok, messages), add_special_tokens=False)["input_ids"]

    def item_of(self, code_tokens: list[int]) -> int | None:
        code = self.trie.decode_codes(code_tokens)
        return self.index.lookup(code) if code is not None else None


def run_rl(cfg: RLConfig, run: RunDir) -> dict:
    """ECPO from the SFT model; writes <run>/<rl_name>/model (LoRA merged) and its reward curve."""
    _check(cfg)
    out_name = cfg.rl_name
    ds, index = load_prepared(run), load_index(run)
    reward = business_rule(
        preference_reward(load_pscore(run)), flagged_items(ds, cfg.flagged_genre), cfg.rule_threshold, cfg.rule_alpha
    )
    train_users, _ = rl_users(ds, cfg)
    history_len = int(run.manifest()["stages"].get("sft_data", {}).get("config", {}).get("history_len", 10))
    tok, model = load_causal_lm(trained_model_dir(run))
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        model, LoraConfig(r=cfg.rl_lora_rank, lora_alpha=2 * cfg.rl_lora_rank, target_modules="all-linear")
    )
    policy = Policy(model, tok, TokenTrie(index, tok), history_len, ds, index)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.rl_learning_rate)
    out = run.sub(out_name)
    ckpt = out / "checkpoint"
    log: list[dict] = []
    start = 0
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        start, log = state["step"], state["log"]
        print(f"resuming RL from step {start}")
    for step in tqdm(range(start, cfg.rl_steps), desc="ECPO", initial=start, total=cfg.rl_steps):
        rng = np.random.default_rng([cfg.seed, step])  # per step: a resumed run draws what it would have
        torch.manual_seed(cfg.seed * 100_003 + step)
        users = rng.choice(train_users, size=min(cfg.users_per_step, len(train_users)), replace=False).tolist()
        log.append(_update(policy, opt, cfg, reward, [ds.users[u].train_items() for u in users], rng, step))
        if (step + 1) % cfg.rl_save_steps == 0 or step + 1 == cfg.rl_steps:
            ckpt.mkdir(parents=True, exist_ok=True)
            trainable = {k: v for k, v in model.state_dict().items() if "lora_" in k}
            state = {"model": trainable, "optimizer": opt.state_dict(), "step": step + 1, "log": log}
            torch.save(state, ckpt / "state.tmp")
            (ckpt / "state.tmp").replace(ckpt / "state.pt")
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    index.save(out / "model" / MODEL_SID_FILE)
    (out / "log.json").write_text(json.dumps(log, indent=2))
    curve = [{"step": h["step"], "loss": h["mean_reward"]} for h in log]
    plot_loss(curve, out / "reward.png", "mean reward of the sampled groups", "ECPO")
    summary = {"steps": cfg.rl_steps, "resumed_from": start}
    summary |= {"first_reward": log[0]["mean_reward"], "last_reward": log[-1]["mean_reward"]}
    run.record(out_name, cfg, {"model": f"{out_name}/model/config.json", "log": f"{out_name}/log.json"}, **summary)
    return summary


def _update(policy: Policy, opt, cfg: RLConfig, reward, histories: list[list[int]], rng, step: int) -> dict:
    """One ECPO step: sample groups from the old policy, score, and update on them."""
    model, trie = policy.model, policy.trie
    prompts = policy.prompts(histories)
    p_ids = [policy.prompt_ids(m) for m in prompts]
    exclude = [{policy.index.codes[i] for i in h} for h in histories]
    model.eval()
    pref = trie_sample(model, policy.tok, trie, prompts, cfg.group_size, True, cfg.temperature, exclude)
    free = trie_sample(model, policy.tok, trie, prompts, cfg.group_size, False, cfg.temperature)
    rows_p, rows_c, advs, rewards, legal_n = [], [], [], [], 0
    for b, h in enumerate(histories):
        items = [policy.item_of(c) for c in pref[b]]
        seen = set(h)
        r = reward(h, [i if i is not None else 0 for i in items])
        r = np.where([i is None or i in seen for i in items], 0.0, r)  # a seen item earns nothing
        rewards.append(r)
        for c, a in zip(pref[b], group_advantages(r), strict=True):
            rows_p.append(b)
            rows_c.append(c)
            advs.append(float(a))
        legal = [policy.item_of(c) is not None for c in free[b]]
        legal_n += sum(legal)
        for i in format_selection(legal, cfg.format_samples, rng):
            rows_p.append(b)
            rows_c.append(free[b][i])
            advs.append(float("nan"))  # marks a format sample (advantage 1, weighted separately)
    pad = policy.tok.pad_token_id
    with torch.no_grad():
        logp_old = sequence_logprobs(model, p_ids, rows_p, rows_c, pad)
    adv = torch.tensor(advs)
    is_format = torch.isnan(adv)
    sft_batch = _sft_batch(policy, histories) if cfg.sft_weight > 0 else None
    model.train()
    # several updates on one batch of samples: from the second on, the ratio leaves 1 and the clips act
    for _ in range(cfg.updates_per_sample):
        logp = sequence_logprobs(model, p_ids, rows_p, rows_c, pad)
        loss = ecpo_loss(logp[~is_format], logp_old[~is_format], adv[~is_format], cfg.epsilon, cfg.delta)
        if is_format.any():
            ones = torch.ones(int(is_format.sum()))
            fmt = ecpo_loss(logp[is_format], logp_old[is_format], ones, cfg.epsilon, cfg.delta)
            loss = loss + cfg.format_weight * fmt
        if sft_batch is not None:
            loss = loss + cfg.sft_weight * answer_loss(model, sft_batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
    all_r = np.concatenate(rewards)
    return {
        "step": step + 1,
        "loss": loss.item(),
        "mean_reward": float(all_r.mean()),
        "free_legality": legal_n / (len(histories) * cfg.group_size),
    }


def _sft_batch(policy: Policy, histories: list[list[int]]) -> dict[str, torch.Tensor]:
    """Behaviour SFT rows for the step's users: each history's last item as the target."""
    rows = []
    for h in histories:
        if len(h) < 2:
            continue
        msgs = policy.prompts([h[:-1]])[0] + [{"role": "assistant", "content": policy.index.sid(h[-1])}]
        rows.append(encode_chat(policy.tok, msgs, 512))
    return LeftPadCollator(policy.tok.pad_token_id)(rows)
