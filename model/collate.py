"""Chat samples -> token ids with answer-only labels, and a left-padding collator.

Left padding puts every answer at the end of its row, so the model only needs logits for the
last `keep` positions (`logits_to_keep`): the LM head over a 49k vocabulary is then computed for
a handful of positions instead of the whole prompt, a large saving on CPU.
"""

from __future__ import annotations

import torch

from tokenizer_ext.prompt_block import fill_count, filler_id
from tokenizer_ext.sid import SID_BEGIN

IGNORE = -100


def encode_chat(tok, messages: list[dict], max_length: int, prompt_label_ids: set[int] | None = None) -> dict:
    """input_ids and labels (-100 on the prompt) for one chat whose last turn is the answer.
    Prompt tokens in `prompt_label_ids` are labelled too: with the SID code tokens, every item of a
    behaviour prompt's history is also a next-item target given the items before it (dense
    supervision, as a sequential recommender trains), at no extra forward cost."""
    prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the prompt differently inside the full chat")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer = full[len(prompt) :]
    a_ids = tok(answer, add_special_tokens=False)["input_ids"]
    if len(a_ids) >= max_length:
        raise ValueError(f"answer of {len(a_ids)} tokens does not fit max_length={max_length}")
    if SID_BEGIN in answer:  # prompts of a SID search start with fillers at inference (tokenizer_ext.prompt_block)
        p_ids = [filler_id(tok)] * fill_count(len(p_ids) + 1) + p_ids
    p_ids = p_ids[-(max_length - len(a_ids)) :]  # drop the oldest prompt tokens if too long
    p_labels = [t if prompt_label_ids and t in prompt_label_ids else IGNORE for t in p_ids]
    return {"input_ids": p_ids + a_ids, "labels": p_labels + a_ids}


class LeftPadCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append([self.pad_id] * pad + list(r["input_ids"]))
            labels.append([IGNORE] * pad + list(r["labels"]))
            mask.append([0] * pad + [1] * len(r["input_ids"]))
        labels_t = torch.tensor(labels)
        # first position (from the left) holding any label; logits are needed from one before it
        has_label = (labels_t != IGNORE).any(0).nonzero()
        first = int(has_label[0]) if len(has_label) else width - 1
        batch = {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "labels": labels_t,
            "logits_to_keep": torch.tensor(width - first + 1),
        }
        images = [torch.as_tensor(r["image_features"]) for r in rows if r.get("image_features") is not None]
        if images:  # rows with an image, in row order: VisionLM fills their <image> slots in that order
            batch["image_features"] = torch.stack(images)
        return batch


def answer_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) for the answer positions only and the tokens they predict (B, T), with
    -100 where there is nothing to predict. Image features go along when the batch has them."""
    labels = batch["labels"]
    keep = min(int(batch["logits_to_keep"]), labels.shape[1])
    images = {"image_features": batch["image_features"]} if "image_features" in batch else {}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep, **images)
    logits = out.logits[:, :-1].float()  # position t predicts token t+1
    return logits, labels[:, labels.shape[1] - keep + 1 :]


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens, computing logits only where needed."""
    logits, target = answer_logits(model, batch)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE
    )
