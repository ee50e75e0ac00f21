"""One ECPO step: roll out groups from the old policy, score them, update on them (with the SFT term).

Rollouts are the top-G beams of the constrained trie beam search by default (the OneRec report's
choice, its Table 8): the group is then the list users are actually shown, so the update reorders
exactly that list. Sampling (`--rollout sample`) spreads the group over the whole catalogue
instead, and the update then mostly moves probability mass that beam search never shows.

The SFT term (the report trains RL and SFT together) is the cross-entropy of the real next item's
codes after the same prompt: one more row of the shared prompt pass, so it costs almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np
import torch

from ranking.generate import generation_prompt, trie_beam_search, trie_sample
from rl.ecpo import ecpo_loss, sequence_logprobs
from rl.rewards import RewardFn, format_selection, group_advantages, hit_rank_reward
from sft_data.prompts import behaviour_prompt
from thinkrec.config import RLConfig
from thinkrec.data import Dataset
from tokenizer_ext.sid import SIDIndex, TokenTrie

ROLLOUT, FORMAT, SFT = 0, 1, 2  # the kinds of rows one update trains on


class Policy:
    """The model being aligned, with what rollouts and scoring need."""

    def __init__(self, model, tok, trie: TokenTrie, history_len: int, ds: Dataset, index: SIDIndex):
        self.model, self.tok, self.trie = model, tok, trie
        self.ds, self.index, self.history_len = ds, index, history_len

    def prompts(self, histories: list[list[int]]) -> list[list[dict]]:
        return [behaviour_prompt(self.ds, self.index, h, self.history_len) for h in histories]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tok(generation_prompt(self.tok, messages), add_special_tokens=False)["input_ids"]

    def item_of(self, code_tokens: list[int]) -> int | None:
        code = self.trie.decode_codes(code_tokens)
        return self.index.lookup(code) if code is not None else None

    def code_tokens(self, item: int) -> list[int]:
        return [self.trie.level_ids[lv][c] for lv, c in enumerate(self.index.codes[item])]


@torch.no_grad()
def beam_rollouts(policy: Policy, prompts: list[list[dict]], group: int, exclude) -> list[list[list[int]]]:
    """Per prompt, the code tokens of its top-`group` constrained beams (seen items excluded)."""
    tok, model = policy.tok, policy.model
    tok.padding_side = "left"
    texts = [generation_prompt(tok, m) for m in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    out = model(**enc, position_ids=pos, use_cache=True, logits_to_keep=1)  # the search reads the last one only
    tokens, scores = trie_beam_search(model, out, enc["attention_mask"], policy.trie, group, True, exclude)
    return [
        [b for b, s in zip(row_t, row_s, strict=True) if s > -float("inf")]
        for row_t, row_s in zip(tokens.tolist(), scores.tolist(), strict=True)
    ]


def group_rewards(
    policy: Policy, cfg: RLConfig, reward: RewardFn, history: list[int], target: int, group: list[list[int]]
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(total reward, preference reward, whether the group holds the real next item) of one group."""
    items = [policy.item_of(c) for c in group]
    pref = reward(history, [i if i is not None else 0 for i in items])
    ranked = hit_rank_reward(items, target, cfg.rank_weight if cfg.rollout == "beam" else 0.0)
    if cfg.rollout != "beam" and ranked.any() and cfg.rank_weight > 0:  # sample order is no rank: even penalty
        ranked = np.where(ranked > 0, 1.0, -cfg.rank_weight / len(items))
    total = cfg.pscore_weight * pref + cfg.hit_weight * ranked
    seen = set(history)
    bad = np.array([i is None or i in seen for i in items])
    if bad.any():  # an illegal or seen item ranks below every other one of its group
        total = np.where(bad, float(total[~bad].min(initial=0.0)), total)
    return total, np.where(bad, 0.0, pref), target in items


def ecpo_step(
    policy: Policy,
    opt: torch.optim.Optimizer,
    cfg: RLConfig,
    reward: RewardFn,
    histories: list[list[int]],
    targets: list[int],
    rng: np.random.Generator,
    step: int,
) -> dict:
    """One ECPO step on (history, real next train item) pairs: roll out, score, update."""
    model, trie = policy.model, policy.trie
    prompts = policy.prompts(histories)
    p_ids = [policy.prompt_ids(m) for m in prompts]
    exclude = [{policy.index.codes[i] for i in h} for h in histories]
    model.eval()
    if cfg.rollout == "beam":
        groups = beam_rollouts(policy, prompts, cfg.group_size, exclude)
    else:
        groups = trie_sample(model, policy.tok, trie, prompts, cfg.group_size, True, cfg.temperature, exclude)
    free = trie_sample(model, policy.tok, trie, prompts, cfg.group_size, False, cfg.temperature)
    rows, prefs, hits, legal_n = Rows(), [], 0, 0
    for b, (h, t) in enumerate(zip(histories, targets, strict=True)):
        total, pref, hit = group_rewards(policy, cfg, reward, h, t, groups[b])
        prefs.append(pref)
        hits += hit
        for c, a in zip(groups[b], group_advantages(total), strict=True):
            rows.add(b, c, float(a), ROLLOUT)
        legal = [policy.item_of(c) is not None for c in free[b]]
        legal_n += sum(legal)
        for i in format_selection(legal, cfg.format_samples, rng):
            rows.add(b, free[b][i], 1.0, FORMAT)  # advantage 1 (the format reward), weighted separately
        if cfg.sft_weight > 0:  # the SFT term rides on the same prompt pass: its codes are one more row
            rows.add(b, policy.code_tokens(t), 0.0, SFT)
    loss, sft = policy_update(policy, opt, cfg, p_ids, rows)
    record = step_record(step, loss, sft, prefs, hits / len(histories))
    return record | {"free_legality": legal_n / (len(histories) * cfg.group_size)}


def step_record(step: int, loss: float, sft: float, prefs: list[np.ndarray], hit_rate: float) -> dict:
    """One line of the RL log: the step's losses, mean preference reward and group hit rate."""
    mean_reward = float(np.concatenate(prefs).mean())
    return {"step": step + 1, "loss": loss, "sft_loss": sft, "mean_reward": mean_reward, "group_hit_rate": hit_rate}


@dataclass
class Rows:
    """What one update trains on: per row, its prompt's index, its continuation's tokens (the SID,
    or a rationale and the SID), its advantage and its kind (ROLLOUT, FORMAT or SFT)."""

    prompt: list[int] = dc_field(default_factory=list)
    tokens: list[list[int]] = dc_field(default_factory=list)
    adv: list[float] = dc_field(default_factory=list)
    kind: list[int] = dc_field(default_factory=list)

    def add(self, b: int, tokens: list[int], adv: float, kind: int) -> None:
        self.prompt.append(b)
        self.tokens.append(tokens)
        self.adv.append(adv)
        self.kind.append(kind)


def policy_update(policy: Policy, opt: torch.optim.Optimizer, cfg: RLConfig, p_ids, rows: Rows) -> tuple[float, float]:
    """cfg.updates_per_sample ECPO updates on one batch of rows (from the second on, the ratio
    leaves 1 and the clips act); the SFT rows add their per-token cross-entropy. (loss, SFT loss)."""
    model, pad = policy.model, policy.tok.pad_token_id
    with torch.no_grad():
        logp_old = sequence_logprobs(model, p_ids, rows.prompt, rows.tokens, pad)
    adv, kind = torch.tensor(rows.adv, device=model.device), torch.tensor(rows.kind, device=model.device)
    tokens = torch.tensor([len(t) for t in rows.tokens], dtype=torch.float32, device=model.device)
    model.train()
    sft = torch.zeros((), device=model.device)
    for _ in range(cfg.updates_per_sample):
        logp = sequence_logprobs(model, p_ids, rows.prompt, rows.tokens, pad)
        loss = torch.zeros((), device=model.device)
        for k, weight in ((ROLLOUT, 1.0), (FORMAT, cfg.format_weight)):
            if (kind == k).any():
                part = ecpo_loss(logp[kind == k], logp_old[kind == k], adv[kind == k], cfg.epsilon, cfg.delta)
                loss = loss + weight * part
        if (kind == SFT).any():  # next-token cross-entropy of the real item's tokens
            sft = -(logp[kind == SFT] / tokens[kind == SFT]).mean()
            loss = loss + cfg.sft_weight * sft
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
    return loss.item(), sft.item()
