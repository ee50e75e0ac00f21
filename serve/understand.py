"""What a chat request asks for, read from the user's own words by meaning, on any catalogue.

The model's reply names what it heard ("You asked for anything but Comedy"), and the served chat
keeps its items to those that satisfy it (sft_data/requests.py). A phrasing the model never saw
can come back wrong, and a negation said another way ("spare me the comedies") came back as its
opposite. This reader grounds the request in the catalogue's own values instead:

- values of the primary attribute (genres, categories) are found by meaning: every span of one
  to three words is embedded with the project's text encoder and matched to the values and the
  words people use for them (GENRE_WORDS where the catalogue is MovieLens), above a similarity
  threshold; an exact word match always counts;
- a negation cue before a value in the same clause ("no", "not", "without", "anything but",
  "tired of", "spare me", ...) makes it an exclusion, never an inclusion;
- decades and year bounds are read from digits or words ("the nineties", "'80s", "before 1980",
  "newer than 1995").

The served chat uses what this reads where the model's own reading is missing or disagrees with
it (an exclusion read as an inclusion, another value): the user's words win over the model's guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sft_data.requests import GENRE_WORDS, Constraint
from thinkrec.data import Dataset

MAX_WORDS = 40  # words of a clause read for values
SIMILARITY = 0.62  # cosine above which a span names a value (MiniLM; exact words need none)
NEGATION = re.compile(
    r"\b(no|not|nothing|none|never|without|except|but|avoid|skip|enough|less|hate|dislike|stop|"
    r"don'?t|do not|doesn'?t|won'?t|rather not|other than|instead of|rather than|tired of|sick of|"
    r"fed up|bored of|bored with|spare me|away from|done with|not into|no more|anything but)\b"
)
CLAUSE = re.compile(r"[,;.!?]|\bbut (?:also|maybe|with)\b|\band\b(?= (?:some|a|an|more)\b)")
GENERIC = {
    "a", "an", "the", "some", "something", "anything", "any", "please", "me", "i", "i'd", "i'm", "my", "for",
    "want", "like", "love", "would", "could", "you", "recommend", "suggest", "show", "give", "find", "get",
    "one", "ones", "pick", "next", "tonight", "today", "now", "good", "great", "new", "more", "of", "to", "in",
    "and", "or", "with", "that", "this", "is", "it", "be", "mood", "feel", "kind", "sort", "type",
}  # fmt: skip
DECADE_WORDS = {
    "twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
    "seventies": 1970, "eighties": 1980, "nineties": 1990,
}  # fmt: skip


@dataclass
class Heard:
    constraint: Constraint
    values: dict[str, bool]  # value -> wanted (False: excluded)


class RequestReader:
    def __init__(self, ds: Dataset, encoder=None):
        self.ds = ds
        self.values = sorted({g for it in ds.items for g in it.genres})
        # the words for each value: the value itself, and what people type for it where known
        self.phrases = [(v, w) for v in self.values for w in dict.fromkeys([v, *GENRE_WORDS.get(v, [])])]
        self._encoder = encoder
        self._phrase_vectors: np.ndarray | None = None
        self.words = set(ds.noun) | {"film", "films", "movie", "movies"}

    def encoder(self):
        if self._encoder is None:
            from tokenizer_ext.embed import default_embed_model, text_encoder

            self._encoder = text_encoder(str(default_embed_model()))  # the one tokenize's embed_texts uses
        return self._encoder

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.encoder().encode(texts, normalize_embeddings=True, show_progress_bar=False))

    def _vectors(self) -> np.ndarray:
        if self._phrase_vectors is None:
            self._phrase_vectors = self._embed([w.lower() for _, w in self.phrases])
        return self._phrase_vectors

    def value_mentions(self, clause: str) -> list[tuple[str, int]]:
        """(value, character offset) of each value the clause names, by its words or by meaning."""
        # a request is a sentence or two: the words past MAX_WORDS are not read (and cost nothing)
        tokens = [(m.group(0), m.start()) for m in re.finditer(r"[a-z][a-z'\-]*", clause.lower())][:MAX_WORDS]
        found: dict[str, int] = {}
        for v, w in self.phrases:  # exact words first
            m = re.search(rf"(?<![a-z]){re.escape(w.lower())}(?:s|es)?(?![a-z])", clause.lower())
            if m:
                found.setdefault(v, m.start())
        spans = []
        for n in (1, 2, 3):
            for i in range(len(tokens) - n + 1):
                words = [t for t, _ in tokens[i : i + n]]
                if all(t in GENERIC or t in self.words for t in words):
                    continue
                spans.append((" ".join(words), tokens[i][1]))
        if spans and self.phrases:
            sims = self._embed([s for s, _ in spans]) @ self._vectors().T
            for k, (_, at) in enumerate(spans):
                j = int(sims[k].argmax())
                if sims[k, j] >= SIMILARITY:
                    found.setdefault(self.phrases[j][0], at)
        return sorted(found.items(), key=lambda kv: kv[1])

    def read(self, text: str) -> Heard | None:
        """The constraint the user's words state, or None where they name no value, decade or bound."""
        low = text.lower()[:2000]
        wanted: dict[str, bool] = {}
        for clause in CLAUSE.split(low)[:8]:
            if not clause or not clause.strip():
                continue
            for value, at in self.value_mentions(clause):
                wanted.setdefault(value, not NEGATION.search(clause[:at]))
        years = _years(low)
        if not wanted and not years:
            return None
        include = frozenset(v for v, ok in wanted.items() if ok)
        exclude = frozenset(v for v, ok in wanted.items() if not ok)
        parts = []
        if include:
            parts.append(" and ".join(sorted(include)))
        if exclude:
            parts.append("anything but " + " or ".join(sorted(exclude)))
        if years.get("label"):
            parts.append(years["label"])
        label = ", ".join(parts)
        keywords = tuple(sorted(include | exclude))
        kind = "exclude" if exclude and not include else "genre" if include else "decade"
        constraint = Constraint(
            kind,
            label,
            keywords,
            any_of=include if len(include) == 1 else frozenset(),
            all_of=include if len(include) > 1 else frozenset(),
            none_of=exclude,
            year_min=years.get("min"),
            year_max=years.get("max"),
        )
        return Heard(constraint, wanted)


def _years(low: str) -> dict:
    """A decade or a year bound named in digits or words."""
    for word, decade in DECADE_WORDS.items():
        if re.search(rf"\b{word}\b", low):
            return {"min": decade, "max": decade + 9, "label": f"the {decade}s"}
    if m := re.search(r"\b(?:before|older than|earlier than|pre-?)\s*(1[89]\d\d|20\d\d)\b", low):
        return {"max": int(m.group(1)) - 1, "label": f"something older than {m.group(1)}"}
    if m := re.search(r"\b(?:after|newer than|later than|since|post-?)\s*(1[89]\d\d|20\d\d)\b", low):
        return {"min": int(m.group(1)) + 1, "label": f"something newer than {m.group(1)}"}
    if m := re.search(r"\b(?:the\s+)?(1[89]\d0|20[0-2]0)s\b", low):
        d = int(m.group(1))
        return {"min": d, "max": d + 9, "label": f"the {d}s"}
    if m := re.search(r"(?:'|\b)([2-9]0)s\b", low):
        d = 1900 + int(m.group(1))
        return {"min": d, "max": d + 9, "label": f"the {d}s"}
    return {}


def disagrees(model: Constraint | None, user: Heard) -> bool:
    """Whether the model's reading contradicts the user's words: a value the user excluded that the
    model would include (or the reverse), or no reading at all where the user named something."""
    if model is None:
        return True
    for value, want in user.values.items():
        if want and value in model.none_of:
            return True
        if not want and (value in model.any_of or value in model.all_of):
            return True
    named = model.any_of | model.all_of | model.none_of
    return bool(user.values) and not (named & set(user.values))


def settle(model: Constraint | None, user: Heard | None) -> Constraint | None:
    """The constraint a chat turn is held to: the user's words, read by meaning, where the model's
    reading misses or contradicts them; else the model's own."""
    return user.constraint if user is not None and disagrees(model, user) else model


MAX_REPLY_CHARS = 300


def tidy_reply(text: str, max_chars: int = MAX_REPLY_CHARS) -> str:
    """A reply cut where it starts to loop (a word or a phrase of up to 4 words said a third time in a
    row) and at `max_chars` on a word boundary: a small model can repeat one word to the token limit."""
    words = text.split()
    for i in range(len(words)):
        for n in (1, 2, 3, 4):
            if i + 3 * n <= len(words) and words[i : i + n] == words[i + n : i + 2 * n] == words[i + 2 * n : i + 3 * n]:
                words = words[: i + n]
                break
        else:
            continue
        break
    out = " ".join(words)
    if len(out) > max_chars:
        out = out[:max_chars].rsplit(" ", 1)[0] + " ..."
    return out
