"""Rationales the model writes before it names an item (the reasoning prompt of sft_data.qa):
greedy ones for evaluation, sampled groups of them for reasoning RL."""

from __future__ import annotations

import torch
from tqdm import tqdm

from sft_data.qa import THINK_CLOSE, THINK_OPEN


def _close(text: str) -> tuple[str, bool]:
    """The rationale cut at its closing tag, re-closed; and whether the model closed it itself."""
    body, closed = text.split(THINK_CLOSE)[0].strip(), THINK_CLOSE in text
    return THINK_OPEN + body + THINK_CLOSE, closed


@torch.no_grad()
def write_rationales(model, tok, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy rationales, each opened with <think> and cut (or closed) at </think>."""
    return [r for r, _ in sample_rationales(model, tok, prompts, 1, max_new_tokens, 0.0, batch_size)]


@torch.no_grad()
def sample_rationales(
    model, tok, prompts: list[list[dict]], group: int, max_new_tokens: int, temperature: float, batch_size: int = 8
) -> list[tuple[str, bool]]:
    """`group` rationales per prompt, prompt-major (greedy when temperature is 0): (text, closed)."""
    tok.padding_side = "left"
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="rationales", leave=False):
        texts = [
            tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) + THINK_OPEN
            for m in prompts[start : start + batch_size]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {}
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            num_return_sequences=group,
            pad_token_id=tok.pad_token_id,
            **(sampling or {"do_sample": False}),
        )
        out += [_close(t) for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]
    return out
