"""Task builders. Each returns a datasets.Dataset with a `messages` column (system, user,
assistant) and a `task` column; the assistant turn is the only part trained on."""

from __future__ import annotations

import random

from datasets import Dataset as HFDataset

from sft_data.prompts import behaviour_prompt, item_description, system_prompt
from thinkrec.data import Dataset
from tokenizer_ext.sid import SIDIndex


def _sample(messages: list[dict], answer: str, task: str) -> dict:
    return {"messages": [*messages, {"role": "assistant", "content": answer}], "task": task}


def behaviour_samples(
    ds: Dataset, index: SIDIndex, history_len: int, windows_per_user: int, window_stride: int = 1
) -> HFDataset:
    """History -> next item, for targets of each user's train part taken from the newest end,
    `window_stride` items apart, at most `windows_per_user` of them (0 = as many as fit). The
    valid and test targets are never used. With the dense history loss every history item is a
    target too, so a stride of up to `history_len` still teaches every train transition."""
    if history_len < 1 or window_stride < 1 or windows_per_user < 0:
        raise ValueError("history_len and window_stride must be >= 1, windows_per_user >= 0")
    rows = []
    for u in ds.users:
        train = u.train_items()
        targets = range(len(train) - 1, 0, -window_stride)
        for t in targets[:windows_per_user] if windows_per_user else targets:
            prompt = behaviour_prompt(ds, index, train[:t], history_len)
            rows.append(_sample(prompt, index.sid(train[t]), "behaviour"))
    return HFDataset.from_list(rows)


def alignment_samples(ds: Dataset, index: SIDIndex, n: int, seed: int, items: list[int] | None = None) -> HFDataset:
    """SID -> description and description -> SID, over randomly drawn catalogue items (from
    `items` when given, e.g. to keep held-out items out of training)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        idx = rng.randrange(len(ds.items)) if items is None else rng.choice(items)
        sid, desc = index.sid(idx), item_description(ds, idx)
        system = {"role": "system", "content": system_prompt(ds)}
        if i % 2 == 0:
            rows.append(_sample([system, {"role": "user", "content": f"What is {sid}?"}], desc, "sid_to_text"))
        else:
            rows.append(_sample([system, {"role": "user", "content": f"Semantic ID of: {desc}"}], sid, "text_to_sid"))
    return HFDataset.from_list(rows)
