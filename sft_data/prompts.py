"""The prompt formats shared by training, evaluation and serving: one place, so they never drift."""

from __future__ import annotations

from thinkrec.data import Dataset
from tokenizer_ext.sid import SIDIndex

SYSTEM = "You are ThinkRec, a movie recommender. Items are written as semantic IDs."  # MovieLens's system_prompt
TITLED = 3  # the newest history items a prompt writes with their titles


def system_prompt(ds: Dataset) -> str:
    """The system turn, in the data set's words (the config's noun)."""
    return f"You are ThinkRec, a {ds.noun[0]} recommender. Items are written as semantic IDs."


def history_lines(ds: Dataset, index: SIDIndex, history: list[int], titled: int = TITLED) -> str:
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
    lines = history_lines(ds, index, recent)
    user = f"{ds.verb[0].capitalize()}, oldest first:\n{lines}\nRecommend the next {ds.noun[0]}."
    return [{"role": "system", "content": system_prompt(ds)}, {"role": "user", "content": user}]


def chat_messages(
    ds: Dataset, index: SIDIndex, history: list[int], history_len: int, conversation: list[dict] | None = None
) -> list[dict]:
    """The behaviour prompt for `history` with a conversation after it: the first user turn joins
    the history's message, later turns follow as they are. Training samples and the server's chat
    both build their prompts here, so a request reads the same in both."""
    msgs = behaviour_prompt(ds, index, history, history_len)
    for turn in conversation or []:
        if turn.get("role") not in ("user", "assistant") or not isinstance(turn.get("content"), str):
            raise ValueError("each message needs role 'user' or 'assistant' and a string content")
        if turn["role"] == "user" and msgs[-1]["role"] == "user":
            msgs[-1] = {"role": "user", "content": msgs[-1]["content"] + "\n" + turn["content"]}
        else:
            msgs.append({"role": turn["role"], "content": turn["content"]})
    return msgs


def item_description(ds: Dataset, idx: int) -> str:
    it = ds.items[idx]
    year = f" ({it.year})" if it.year else ""
    return f"{it.title}{year}; {', '.join(it.genres) or 'unknown genre'}"
