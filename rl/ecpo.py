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


def sequence_logprobs(model, prompt_ids: list[list[int]], code_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """log pi(codes | prompt) per row: the code tokens' log-probabilities summed, prompts left-padded,
    logits computed only over the code positions."""
    levels = len(code_ids[0])
    rows = [p + c for p, c in zip(prompt_ids, code_ids, strict=True)]
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=model.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=levels + 1).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    codes = torch.tensor(code_ids, device=model.device)
    return logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)
