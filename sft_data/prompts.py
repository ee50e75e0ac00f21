"""The prompt formats shared by training, evaluation and serving: one place, so they never drift."""

from __future__ import annotations

from thinkrec.data import Dataset
from tokenizer_ext.sid import SIDIndex

SYSTEM = "You are ThinkRec, a movie recommender. Items are written as semantic IDs."


def history_lines(ds: Dataset, index: SIDIndex, history: list[int], titled: int = 3) -> str:
    """One line per item, oldest first; the newest `titled` items also carry their title."""
    lines = []
    for pos, idx in enumerate(history):
        title = f" {ds.items[idx].title}" if pos >= len(history) - titled else ""
        lines.append(index.sid(idx) + title)
    return "\n".join(lines)


def behaviour_prompt(ds: Dataset, index: SIDIndex, history: list[int], history_len: int = 10) -> list[dict]:
    """Chat messages asking for the next item after `history` (item indices, oldest first)."""
    if not history:
        raise ValueError("empty history: a behaviour prompt needs at least one watched item")
    recent = history[-history_len:]
    user = f"Watched, oldest first:\n{history_lines(ds, index, recent)}\nRecommend the next movie."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def item_description(ds: Dataset, idx: int) -> str:
    it = ds.items[idx]
    year = f" ({it.year})" if it.year else ""
    return f"{it.title}{year}; {', '.join(it.genres) or 'unknown genre'}"
