"""Padding-free batches: samples laid end to end in one row, each with its own position ids.

transformers reads the per-sample boundaries from the position ids (a position that does not
follow the one before starts a new sample: `masking_utils.find_packed_sequence_indices`) when
there is no 2D attention mask and no cache, and builds the block-diagonal causal mask for the
attention implementation in use (a sparse BlockMask for flex_attention, a dense one for sdpa or
eager). No token attends across a sample boundary, so a packed row computes what the padded
batch computes, without the padding.

Labels are shifted per sample before packing (position t predicts token t+1 of its own sample),
and only the labelled positions go through the LM head (`logits_to_keep` with their indices): the
answer tokens and, with the history loss, the SID codes inside behaviour prompts. The padded
path's trick of keeping the last N logits does not apply to a packed row, whose labels are spread
over all of it.
"""

from __future__ import annotations

import random

import torch
from torch.utils.checkpoint import checkpoint

from model.collate import IGNORE

CE_CHUNK = 4096  # labelled positions per cross-entropy chunk: bounds the fp32 logits alive at once


def shifted_targets(labels: list[int]) -> list[int]:
    """Per position, the label of the next token of the same sample (IGNORE at the last)."""
    return list(labels[1:]) + [IGNORE]


def pack_indices(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """Sample indices grouped into packs of at most `budget` tokens: next-fit over a seeded
    shuffle (random composition; the waste per pack is under one sample's length)."""
    too_long = [n for n in lengths if n > budget]
    if too_long:
        raise ValueError(f"a sample of {max(too_long)} tokens does not fit a pack of batch_tokens={budget}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    packs, current, used = [], [], 0
    for i in order:
        if used + lengths[i] > budget and current:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        packs.append(current)
    return packs


class PackedDataset(torch.utils.data.Dataset):
    """One item per pack: the list of its encoded rows (input_ids, labels)."""

    def __init__(self, rows, budget: int, seed: int):
        self.rows = rows
        self.packs = pack_indices([len(ids) for ids in rows["input_ids"]], budget, seed)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> list[dict]:
        batch = self.rows[self.packs[i]]  # one columnar read per pack
        return [{"input_ids": ids, "labels": lab} for ids, lab in zip(batch["input_ids"], batch["labels"], strict=True)]


class PackedCollator:
    """Rows (or packs of rows) -> one packed row (1, N). With `budget`, N is always `budget`
    (the tail is a filler sample of pad tokens that predicts nothing): a fixed shape lets a
    compiled model run without recompiling."""

    def __init__(self, pad_id: int, budget: int | None = None):
        self.pad_id, self.budget = pad_id, budget

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        rows = [r for item in items for r in (item if isinstance(item, list) else [item])]
        ids: list[int] = []
        pos: list[int] = []
        targets: list[int] = []
        for r in rows:
            ids.extend(r["input_ids"])
            pos.extend(range(len(r["input_ids"])))
            targets.extend(shifted_targets(r["labels"]))
        if self.budget is not None:
            if len(ids) > self.budget:
                raise ValueError(f"{len(ids)} tokens do not fit batch_tokens={self.budget}")
            fill = self.budget - len(ids)
            ids.extend([self.pad_id] * fill)
            pos.extend(range(fill))
            targets.extend([IGNORE] * fill)
        keep = [i for i, t in enumerate(targets) if t != IGNORE]
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "keep": torch.tensor(keep),  # positions whose next token is a label
            "targets": torch.tensor([targets[i] for i in keep]),
        }


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int = CE_CHUNK) -> torch.Tensor:
    """Mean fp32 cross-entropy of (K, V) logits, a chunk at a time: each chunk's fp32 copy is
    recomputed in the backward pass instead of kept, so peak memory is one chunk's, not K's."""
    if targets.numel() == 0:
        return logits.sum() * 0.0

    def part(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(x.float(), t, reduction="sum")

    total = sum(
        checkpoint(part, logits[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
        for i in range(0, len(targets), chunk)
    )
    return total / len(targets)


def packed_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of a packed batch. The LM head
    runs on those positions only. No cache: transformers detects packing only without one."""
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        logits_to_keep=batch["keep"],
        use_cache=False,
    )
    return chunked_cross_entropy(out.logits[0], batch["targets"])
