"""Multiple-choice scoring with the prompt computed once per question.

A question's options share its prompt; scoring each option as its own chat runs the prompt once per
option (4 to 10 times). Here a question is one row: the prompt, then every option's answer tokens
one after another, with an attention mask that lets each option see the prompt and its own earlier
tokens only, and positions that restart after the prompt for each option. Each option's
log-likelihood is then what it is as a separate chat (the same tokens, positions and visible
context), at the cost of one prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.collate import IGNORE, encode_chat


@dataclass
class OptionRow:
    """One question laid out for scoring: the shared prompt and each option's answer tokens."""

    prompt: list[int]
    answers: list[list[int]]
    image_features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(a) for a in self.answers)


def option_row(tok, messages: list[dict], options: list[str], image_features=None) -> OptionRow:
    """Every option encoded as the answer of `messages` (model.collate.encode_chat, as training
    does), split where the first option's labels start: that prefix is the same for all options."""
    # no length cap: a cap cuts each option's prompt by its own answer's length
    encoded = [encode_chat(tok, [*messages, {"role": "assistant", "content": o}], max_length=1 << 20) for o in options]
    cut = min(next(i for i, t in enumerate(e["labels"]) if t != IGNORE) for e in encoded)
    prompt = encoded[0]["input_ids"][:cut]
    if any(e["input_ids"][:cut] != prompt for e in encoded):
        raise ValueError("the options' chats render different prompts")
    return OptionRow(prompt, [e["input_ids"][cut:] for e in encoded], image_features)


def _layout(rows: list[OptionRow], pad_id: int, dtype: torch.dtype) -> dict:
    """Left-padded ids, position ids, the additive 4-D mask and, per row, where each option starts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    starts: list[list[int]] = []
    for b, r in enumerate(rows):
        pad, p = width - len(r), len(r.prompt)
        ids[b, pad : pad + p] = torch.tensor(r.prompt)
        positions[b, pad : pad + p] = torch.arange(p)
        allowed[b, pad : pad + p, pad : pad + p] = torch.ones(p, p, dtype=torch.bool).tril()
        at, row_starts = pad + p, []
        for a in r.answers:
            n = len(a)
            ids[b, at : at + n] = torch.tensor(a)
            positions[b, at : at + n] = torch.arange(p, p + n)
            allowed[b, at : at + n, pad : pad + p] = True  # the prompt
            allowed[b, at : at + n, at : at + n] = torch.ones(n, n, dtype=torch.bool).tril()  # its own tokens
            row_starts.append(at)
            at += n
        allowed[b, torch.arange(pad), torch.arange(pad)] = True  # padding sees itself: no empty softmax row
        starts.append(row_starts)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    first_needed = min(width - len(r) + len(r.prompt) - 1 for r in rows)  # the last prompt position
    return {"ids": ids, "positions": positions, "mask": mask[:, None], "starts": starts, "keep": width - first_needed}


@torch.no_grad()
def option_scores(model, rows: list[OptionRow], pad_id: int) -> list[list[float]]:
    """Per row, each option's summed log-likelihood as the answer (the model in eval mode)."""
    param = next(model.parameters())
    batch = _layout(rows, pad_id, param.dtype)
    images = [r.image_features for r in rows if r.image_features is not None]
    extra = {"image_features": torch.stack([torch.as_tensor(f) for f in images]).to(param.device)} if images else {}
    out = model(
        input_ids=batch["ids"].to(param.device),
        attention_mask=batch["mask"].to(param.device),
        position_ids=batch["positions"].to(param.device),
        logits_to_keep=batch["keep"],
        **extra,
    )
    logp = torch.log_softmax(out.logits.float(), -1).cpu()
    offset = batch["ids"].shape[1] - batch["keep"]  # logits column j is position offset + j
    scores = []
    for b, r in enumerate(rows):
        last_prompt = batch["ids"].shape[1] - len(r) + len(r.prompt) - 1
        row = []
        for start, answer in zip(batch["starts"][b], r.answers, strict=True):
            # token 0 is predicted at the prompt's last position, token j at the option's position j - 1
            at = [last_prompt] + list(range(start, start + len(answer) - 1))
            row.append(float(sum(logp[b, pos - offset, t] for pos, t in zip(at, answer, strict=True))))
        scores.append(row)
    return scores
