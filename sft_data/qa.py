"""Question-answer builders whose answers are read off the data, so they can be checked:

- user-QA: questions about a user's tastes, answered from their history (most-watched genre among
  the movies shown, which of four titles is in a history written as SIDs only, whether they rated a
  movie 4 stars or more);
- video-QA: questions about an item given its SID (title, genre, release decade);
- reasoning traces: a short rationale over the history (genre counts, the latest movie), then the
  next item as a SID, as in OneRec-Think's "think, then recommend".

Every QA sample is multiple choice: the options are listed in the question, the answer is the
right option's text. The evaluation scores every option by its likelihood (no parsing).

Held-out users and items (every `HOLDOUT_EVERY`-th one) are never asked about in training, so the
QA evaluation measures generalisation to new users and items, not recall of seen questions.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sft_data.prompts import history_lines, system_prompt
from thinkrec.data import Dataset
from tokenizer_ext.sid import SIDIndex

HOLDOUT_EVERY = 10
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def reason_ask(ds: Dataset) -> str:
    return f"Think briefly about their tastes first, then recommend the next {ds.noun[0]}."


USER_TASKS = ("user_top_genre", "user_watched", "user_rating")
ITEM_TASKS = ("item_title", "item_genre", "item_decade")


@dataclass
class Question:
    task: str
    messages: list[dict]  # system + user turn
    options: list[str]  # candidate answers, as the assistant would write them
    label: int  # index of the right option
    image_features: Any = None  # (tokens, dim) features of the image the prompt's <image> stands for

    def sample(self) -> dict:
        """The chat sample trained on: the question and its right answer."""
        answer = {"role": "assistant", "content": self.options[self.label]}
        return {"messages": [*self.messages, answer], "task": self.task}


def is_heldout_user(position: int) -> bool:
    return position % HOLDOUT_EVERY == 0


def is_heldout_item(idx: int) -> bool:
    return idx % HOLDOUT_EVERY == 0


def _choice(ds: Dataset, task: str, question: str, right: str, wrong: list[str], rng: random.Random) -> Question:
    """The options are listed in the question; the answer is the right option's text, so the
    model's knowledge shows in the answer itself (a letter first would hide it behind a guess)."""
    options = [right, *wrong]
    rng.shuffle(options)
    listed = "\n".join(f"- {o}" for o in options)
    user = f"{question}\nOptions:\n{listed}\nAnswer with one option."
    messages = [{"role": "system", "content": system_prompt(ds)}, {"role": "user", "content": user}]
    return Question(task, messages, options, options.index(right))


def _genres(ds: Dataset) -> list[str]:
    return sorted({g for it in ds.items for g in it.genres})


def _decade(year: str) -> str:
    return f"{year[:3]}0s"


def _has_year(year: str) -> bool:
    return len(year) == 4 and year.isdigit()


# ---- user-QA -------------------------------------------------------------------------------------


def user_question(ds: Dataset, index: SIDIndex, user_pos: int, task: str, history_len: int, rng) -> Question | None:
    """One question of `task` about the user at `user_pos`, from their train history only.
    None when the user's history cannot support the question (e.g. a tie for the top genre)."""
    train = ds.users[user_pos].train_items()
    shown = train[-history_len:]
    if task == "user_top_genre":
        counts = Counter(g for i in shown for g in ds.items[i].genres)
        (top, n), *rest = counts.most_common() or [("", 0)]
        absent = [g for g in _genres(ds) if g not in counts]
        if not n or (rest and rest[0][1] == n) or len(absent) < 3:
            return None
        history = history_lines(ds, index, shown, titled=len(shown))
        q = f"A user {ds.verb[0]}, oldest first:\n{history}\nWhich {ds.primary_word} did they {ds.verb[1]} most?"
        return _choice(ds, task, q, top, rng.sample(absent, 3), rng)
    if task == "user_watched":
        watched = set(train)
        unseen = [i for i in range(len(ds.items)) if i not in watched]
        if len(unseen) < 3:
            return None
        history = history_lines(ds, index, shown, titled=0)
        q = f"A user {ds.verb[0]}, oldest first:\n{history}\nWhich of these {ds.noun[1]} is in that list?"
        wrong = [ds.items[i].title for i in rng.sample(unseen, 3)]
        return _choice(ds, task, q, ds.items[rng.choice(shown)].title, wrong, rng)
    if task == "user_rating":
        older = list(range(max(0, len(train) - history_len)))  # rated items not shown in the prompt
        if not older or ds.strong_signal is None:
            return None
        asked, at_least = ds.strong_signal
        pos = rng.choice(older)
        item, rating = train[pos], ds.users[user_pos].ratings[pos]
        history = history_lines(ds, index, shown, titled=3)
        q = (
            f"A user {ds.verb[0]}, oldest first:\n{history}\n"
            f"They also {ds.verb[0]} {index.sid(item)} {ds.items[item].title}. Did they {asked}?"
        )
        messages = [{"role": "system", "content": system_prompt(ds)}, {"role": "user", "content": q}]
        return Question(task, messages, ["Yes", "No"], 0 if rating >= at_least else 1)
    raise ValueError(f"unknown user-QA task {task!r}")


# ---- video-QA (item questions) ---------------------------------------------------------------------


def item_question(ds: Dataset, index: SIDIndex, idx: int, task: str, rng) -> Question | None:
    it, sid = ds.items[idx], index.sid(idx)
    if task == "item_title":
        others = rng.sample([j for j in range(len(ds.items)) if ds.items[j].title != it.title], 3)
        return _choice(ds, task, f"Which {ds.noun[0]} is {sid}?", it.title, [ds.items[j].title for j in others], rng)
    if task == "item_genre":
        absent = [g for g in _genres(ds) if g not in it.genres]
        if not it.genres or len(absent) < 3:
            return None
        question = f"Which {ds.primary_word} is {sid}?"
        return _choice(ds, task, question, rng.choice(it.genres), rng.sample(absent, 3), rng)
    if task == "item_decade":
        if not _has_year(it.year):
            return None
        decades = sorted({_decade(x.year) for x in ds.items if _has_year(x.year)} - {_decade(it.year)})
        if len(decades) < 3:
            return None
        return _choice(ds, task, f"When was {sid} released?", _decade(it.year), rng.sample(decades, 3), rng)
    raise ValueError(f"unknown video-QA task {task!r}")


# ---- reasoning traces ------------------------------------------------------------------------------


def rationale(ds: Dataset, shown: list[int], target: int | None = None) -> str:
    """Genre counts over the shown history and its newest movie; with the target known (training),
    the genre that leads to it. Every claim is a count or a title from the data."""
    counts = Counter(g for i in shown for g in ds.items[i].genres)
    top = counts.most_common(2)
    lean = " and ".join(f"{g} ({c} of {len(shown)})" for g, c in top) or f"no clear {ds.primary_word}"
    text = f"Recent {ds.noun[1]} lean to {lean}; the latest was {ds.items[shown[-1]].title}."
    if target is not None:
        genres = ds.items[target].genres or [f"any {ds.primary_word}"]
        pick = max(genres, key=lambda g: counts.get(g, 0))
        text += f" Next, a {pick} {ds.noun[0]} fits."
    return text


def reasoning_prompt(ds: Dataset, index: SIDIndex, history: list[int], history_len: int) -> list[dict]:
    shown = history[-history_len:]
    user = f"{ds.verb[0].capitalize()}, oldest first:\n{history_lines(ds, index, shown)}\n{reason_ask(ds)}"
    return [{"role": "system", "content": system_prompt(ds)}, {"role": "user", "content": user}]


def top_genres(ds: Dataset, shown: list[int]) -> set[str]:
    """The genre(s) with the highest count: what a correct rationale names first."""
    counts = Counter(g for i in shown for g in ds.items[i].genres)
    best = max(counts.values(), default=0)
    return {g for g, c in counts.items() if c == best}


LEAN = re.compile(r"lean to (.+?) \(")
LATEST = re.compile(r"the latest was (.+?)\.(?: Next|$)")


def rationale_correct(ds: Dataset, shown: list[int], text: str) -> bool:
    """The genre a rationale names first is the most-watched genre of the history shown."""
    m = LEAN.search(text)
    return bool(m) and m.group(1).strip() in top_genres(ds, shown)


def rationale_well_formed(ds: Dataset, shown: list[int], text: str, closed: bool) -> bool:
    """The format reward's test of a rationale: closed by the model, its leading genre right and
    its latest title the history's newest movie (every claim checked against the data)."""
    body = text.removeprefix(THINK_OPEN).removesuffix(THINK_CLOSE)
    m = LATEST.search(body)
    latest = bool(m) and bool(shown) and m.group(1).strip() == ds.items[shown[-1]].title
    return closed and latest and rationale_correct(ds, shown, body)


def reasoning_sample(ds: Dataset, index: SIDIndex, history: list[int], target: int, history_len: int) -> dict:
    shown = history[-history_len:]
    answer = f"{THINK_OPEN}{rationale(ds, shown, target)}{THINK_CLOSE}\n{index.sid(target)}"
    messages = [*reasoning_prompt(ds, index, history, history_len), {"role": "assistant", "content": answer}]
    return {"messages": messages, "task": "reasoning"}


# ---- sample sets ------------------------------------------------------------------------------------


def user_questions(
    ds: Dataset, index: SIDIndex, n: int, history_len: int, heldout: bool, seed: int, tasks=USER_TASKS
) -> list[Question]:
    """n questions (tasks in turn) about training users, or about held-out users when `heldout`."""
    rng = random.Random(seed)
    users = [p for p in range(len(ds.users)) if is_heldout_user(p) == heldout]
    return _draw(n, tasks, lambda task: user_question(ds, index, rng.choice(users), task, history_len, rng))


def item_questions(ds: Dataset, index: SIDIndex, n: int, heldout: bool, seed: int, tasks=ITEM_TASKS) -> list[Question]:
    rng = random.Random(seed)
    items = [i for i in range(len(ds.items)) if is_heldout_item(i) == heldout]
    return _draw(n, tasks, lambda task: item_question(ds, index, rng.choice(items), task, rng))


def reasoning_samples(ds: Dataset, index: SIDIndex, n: int, history_len: int, seed: int) -> list[dict]:
    """Traces over training users' train parts (sliding targets, newest first)."""
    rng = random.Random(seed)
    users = [p for p in range(len(ds.users)) if not is_heldout_user(p)]
    rows = []
    while len(rows) < n:
        train = ds.users[rng.choice(users)].train_items()
        t = rng.randrange(max(1, len(train) - 8), len(train))
        rows.append(reasoning_sample(ds, index, train[:t], train[t], history_len))
    return rows


MISSES_BEFORE_DROP = 200  # a task that fails this often in a row has no values on this catalogue


def _draw(n: int, tasks, make) -> list[Question]:
    """n questions, the tasks taking turns; a task the catalogue cannot ask (no release years, no
    second attribute value) drops out of the turns instead of stopping the others."""
    out: list[Question] = []
    live, misses = list(tasks), dict.fromkeys(tasks, 0)
    while len(out) < n and live:
        task = live[len(out) % len(live)]
        q = make(task)
        if q is not None:
            out.append(q)
            misses[task] = 0
            continue
        misses[task] += 1
        if misses[task] >= MISSES_BEFORE_DROP:
            live.remove(task)
    return out
