"""Reasoning enhancement (OneRec-Think's third stage): ECPO on rollouts that reason first.

A rollout is a rationale the policy samples (<think>...</think>, sft_data.qa's reasoning format)
followed by the item its constrained beam search ranks first after that rationale; a group is
`group_size` such rollouts of one prompt. What a rationale is worth is the list it leads to, so the
search after it returns the top LIST_K, and the rollout earns:
  - hit_weight x the NDCG of the real next train item in that list (0 when it is not there): the
    rationales that lead to the user's real next item are the ones to reinforce;
  - pscore_weight x the P-Score of the first item (with the business rule over the group);
  - format_weight when the rationale is well-formed: closed by the model, every claim true of the
    history (sft_data.qa.rationale_well_formed), and the item a legal SID.
The update is ECPO on the whole continuation (rationale and first item's SID tokens), with the SFT
term on the teacher trace of the real next item (sft_data.qa.reasoning_sample).
"""

from __future__ import annotations

import numpy as np
import torch

from ranking.generate import beam_recommend
from ranking.rationale import sample_rationales
from rl.loop import ROLLOUT, SFT, Policy, Rows, policy_update, step_record
from rl.rewards import RewardFn, group_advantages
from sft_data.qa import THINK_CLOSE, THINK_OPEN, rationale, rationale_well_formed, reasoning_prompt
from thinkrec.config import RLConfig
from tokenizer_ext.sid import SID_BEGIN

LIST_K = 10  # the list a rationale leads to: the real item's NDCG in it is the rollout's hit reward


def reasoning_prompts(policy: Policy, histories: list[list[int]]) -> list[list[dict]]:
    return [reasoning_prompt(policy.ds, policy.index, h, policy.history_len) for h in histories]


def answer_tokens(policy: Policy, text: str, item: int) -> list[int]:
    """The continuation's tokens: the rationale, a newline, then the item's SID."""
    head = policy.tok(f"{text}\n{SID_BEGIN}", add_special_tokens=False)["input_ids"]
    return head + policy.code_tokens(item)


def reasoning_step(
    policy: Policy,
    opt: torch.optim.Optimizer,
    cfg: RLConfig,
    reward: RewardFn,
    histories: list[list[int]],
    targets: list[int],
    rng: np.random.Generator,
    step: int,
) -> dict:
    """One ECPO step on rationale-then-item rollouts of (history, real next train item) pairs."""
    model, tok, g = policy.model, policy.tok, cfg.group_size
    prompts = reasoning_prompts(policy, histories)
    p_ids = [tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), add_special_tokens=False)[
        "input_ids"] for m in prompts]  # fmt: skip
    model.eval()
    drafts = sample_rationales(model, tok, prompts, g, cfg.think_tokens, cfg.temperature, batch_size=len(prompts))
    exclude = [{policy.index.codes[i] for i in h} for h in histories for _ in range(g)]
    repeated = [m for m in prompts for _ in range(g)]
    found = beam_recommend(
        model, tok, policy.trie, policy.index.lookup, repeated, LIST_K, len(repeated), (True,), "after rationale",
        exclude, [text + "\n" for text, _ in drafts],
    )[True].items  # fmt: skip
    rows, prefs, hits, formed = Rows(), [], 0, 0
    for b, (h, t) in enumerate(zip(histories, targets, strict=True)):
        shown = h[-policy.history_len :]
        group = drafts[b * g : (b + 1) * g]
        lists = found[b * g : (b + 1) * g]
        items = [f[0] if f else None for f in lists]
        pref = reward(h, [i if i is not None else 0 for i in items]) * np.array([i is not None for i in items])
        ndcg = np.array([1.0 / np.log2(f.index(t) + 2) if t in f else 0.0 for f in lists])
        ok = np.array([i is not None and rationale_well_formed(policy.ds, shown, text, closed)
                       for (text, closed), i in zip(group, items, strict=True)])  # fmt: skip
        total = cfg.pscore_weight * pref + cfg.hit_weight * ndcg + cfg.format_weight * ok
        prefs.append(pref)
        hits += bool(ndcg.any())
        formed += int(ok.sum())
        for (text, _), item, a in zip(group, items, group_advantages(total), strict=True):
            if item is not None:  # a rollout with no item has no SID tokens to score
                rows.add(b, answer_tokens(policy, text, item), float(a), ROLLOUT)
        if cfg.sft_weight > 0:  # the teacher trace of the real next item
            teacher = f"{THINK_OPEN}{rationale(policy.ds, shown, t)}{THINK_CLOSE}"
            rows.add(b, answer_tokens(policy, teacher, t), 0.0, SFT)
    loss, sft = policy_update(policy, opt, cfg, p_ids, rows)
    # hit rate: groups with the real item in some rationale's list
    record = step_record(step, loss, sft, prefs, hits / len(histories))
    return record | {"well_formed": formed / (len(histories) * g)}
