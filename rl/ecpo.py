"""ECPO (early-clipped GRPO, OneRec report Sec. 2.4.1) for a policy whose outputs are single items.

    J = E_u 1/G sum_i min(r_i A_i, clip(r_i, 1 - eps, 1 + eps) A_i),   r_i = pi(o_i|u) / pi'_old(o_i|u)
    pi'_old(o_i|u) = max(sg(pi(o_i|u)) / (1 + eps + delta), pi_old(o_i|u))   for A_i < 0

so a negative-advantage sample whose ratio has exploded contributes at most (1 + eps + delta) A_i
while its gradient still flows (plain PPO's clip would be inactive there, GRPO's ratio unbounded).
No KL term. log pi(o|u) is the sum of the code tokens' log-probabilities under the raw policy.
"""

from __future__ import annotations

import math

import torch


def ecpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, eps: float, delta: float) -> torch.Tensor:
    """Negative ECPO objective, averaged over samples. logp carries the gradient; logp_old does not."""
    early = torch.maximum(logp.detach() - math.log(1 + eps + delta), logp_old)
    logp_old = torch.where(adv < 0, early, logp_old)
    ratio = torch.exp(logp - logp_old)
    objective = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    return -objective.mean()


def sequence_logprobs(
    model, prompt_ids: list[list[int]], rows: list[int], code_ids: list[list[int]], pad_id: int
) -> torch.Tensor:
    """log pi(codes_i | prompt_{rows[i]}) per sample: the code tokens' log-probabilities summed.
    Each distinct prompt is encoded once and its KV cache branched to its samples (a group shares
    its prompt), so the cost is one prompt pass per user plus `levels` tokens per sample, with the
    gradient flowing through both. Rows may differ in length (a rationale before the SID): shorter
    ones are padded at the end, and the padding's tokens count nothing."""
    width = max(map(len, prompt_ids))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompt_ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=model.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    idx = torch.tensor(rows, device=model.device)
    lengths = torch.tensor([len(c) for c in code_ids], device=model.device)
    longest = int(lengths.max())
    codes = torch.tensor([c + [pad_id] * (longest - len(c)) for c in code_ids], device=model.device)
    logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)[idx].gather(1, codes[:, :1])
    if codes.shape[1] > 1:
        cache = out.past_key_values
        cache.reorder_cache(idx)  # index_select: differentiable, repeats allowed
        steps = codes.shape[1] - 1
        attn = torch.cat([mask[idx], torch.ones(len(idx), steps, dtype=mask.dtype, device=mask.device)], dim=-1)
        cpos = pos[idx, -1:] + torch.arange(1, steps + 1, device=pos.device)
        logits = model(
            input_ids=codes[:, :-1], attention_mask=attn, position_ids=cpos, past_key_values=cache, use_cache=True
        ).logits
        rest = torch.log_softmax(logits.float(), dim=-1).gather(-1, codes[:, 1:].unsqueeze(-1)).squeeze(-1)
        logp = torch.cat([logp, rest], dim=-1)
    real = torch.arange(longest, device=model.device) < lengths[:, None]
    return (logp * real).sum(-1)
