"""Request-conditioned recommendation: a history, what the user asks for in their own words, a
short reply that says what was taken from each, then the item.

Every request is a `Constraint` over an item's genres and release year, so whether an answer
satisfies it is read off the catalogue. The kinds (`KINDS`) are one or two genres, a decade,
newer or older than the history, an exclusion, a mood mapped to genre groups, and "like <title>
but <constraint>"; the follow-ups of a second turn (`FOLLOW_UPS`) are "something different",
older, newer and "no more <genre>". Each kind has many phrasings; every `HELDOUT_PHRASING_EVERY`-th
one is never trained on, and a share of the rest gets small typos and other casing.

Targets are real items and never a valid or test item:
- derived: the user's next train item, with a request built from its own attributes;
- counterfactual: a request the next item does not satisfy, answered with the user's nearest later
  train item that does, or else the unseen catalogue item the preference model ranks first among
  those that do (P-Score scores when the run has them, else train popularity);
- multi-turn: a derived first turn, then a follow-up answered by an item that meets it and is not
  the first answer.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sft_data.prompts import TITLED, chat_messages
from sft_data.qa import is_heldout_user
from thinkrec.data import Dataset, Item
from tokenizer_ext.sid import SIDIndex

HELDOUT_PHRASING_EVERY = 4  # phrasing i is held out when i % 4 == 3
TYPO_RATE = 0.25  # share of training requests with a small typo

# what people type for a genre; the first form is the catalogue's name
GENRE_WORDS: dict[str, list[str]] = {
    "Action": ["action", "action-packed", "Action"],
    "Adventure": ["adventure", "Adventure", "adventurous"],
    "Animation": ["animated", "animation", "cartoon"],
    "Children's": ["children's", "kids", "family"],
    "Comedy": ["comedy", "funny", "Comedy"],
    "Crime": ["crime", "Crime", "gangster"],
    "Documentary": ["documentary", "Documentary", "doc"],
    "Drama": ["drama", "Drama", "dramatic"],
    "Fantasy": ["fantasy", "Fantasy"],
    "Film-Noir": ["film noir", "noir", "Film-Noir"],
    "Horror": ["horror", "scary", "Horror"],
    "Musical": ["musical", "Musical"],
    "Mystery": ["mystery", "whodunit", "Mystery"],
    "Romance": ["romance", "romantic", "love story"],
    "Sci-Fi": ["sci-fi", "science fiction", "scifi"],
    "Thriller": ["thriller", "suspense", "Thriller"],
    "War": ["war", "War"],
    "Western": ["western", "cowboy", "Western"],
}
# moods as genre groups: an item fits when it has one of `any` and none of `none`
MOODS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "lighter": (frozenset({"Comedy", "Animation", "Children's", "Musical"}), frozenset({"Horror", "War", "Film-Noir"})),
    "darker": (frozenset({"Horror", "Thriller", "Crime", "Film-Noir"}), frozenset({"Children's", "Animation"})),
    "for the kids": (frozenset({"Children's", "Animation"}), frozenset({"Horror", "Crime", "War"})),
    "exciting": (frozenset({"Action", "Adventure", "Sci-Fi"}), frozenset()),
    "romantic": (frozenset({"Romance"}), frozenset({"Horror"})),
}
MOOD_WORDS: dict[str, list[str]] = {
    "lighter": ["lighter", "more light-hearted", "a bit lighter", "more cheerful"],
    "darker": ["darker", "more grim", "a bit darker", "creepier"],
    "for the kids": ["for the kids", "the kids can watch", "family friendly"],
    "exciting": ["exciting", "more thrilling", "full of action"],
    "romantic": ["romantic", "for date night", "sweet and romantic"],
}

PHRASINGS: dict[str, list[str]] = {
    "genre": [
        "Something {genre}, please.",
        "I'm in the mood for a {genre} movie.",
        "any good {genre} films?",
        "Recommend me a {genre} one.",
        "I want to watch something {genre} tonight.",
        "Got a {genre} movie for me?",
        "{genre} please",
        "Could you suggest a {genre} film?",
        "Feel like {genre} today.",
        "Show me a {genre} movie I might like.",
        "What {genre} movie should I see next?",
        "Let's do {genre}.",
        "give me some {genre}",
        "I'd love a {genre} pick.",
        "Anything {genre}?",
        "Next one should be {genre}.",
    ],
    "two_genres": [
        "Something {genre} and {genre2}, please.",
        "A {genre} {genre2} movie?",
        "I want a film that is both {genre} and {genre2}.",
        "Got anything mixing {genre} with {genre2}?",
        "{genre} plus {genre2} tonight",
        "Find me a {genre}/{genre2} movie.",
        "Looking for {genre} with some {genre2}.",
        "Can you pick a {genre} film that's also {genre2}?",
        "in the mood for {genre} and {genre2}",
        "A movie with {genre} and {genre2} in it, please.",
        "I'd like {genre} and {genre2} together.",
        "What about something {genre} but also {genre2}?",
    ],
    "decade": [
        "Something from the {decade}, please.",
        "A movie made in the {decade}?",
        "I feel like a {decade} film.",
        "Anything from the {decade}?",
        "Show me a {decade} movie.",
        "Let's go back to the {decade}.",
        "recommend something released in the {decade}",
        "I want a film from the {decade} tonight.",
        "{decade} movie please",
        "Got a good one from the {decade}?",
        "Pick me something from the {decade}.",
        "What should I watch from the {decade}?",
    ],
    "newer": [
        "Something more recent, please.",
        "Newer stuff please.",
        "I want a newer movie than what I usually watch.",
        "Anything more up to date?",
        "Give me something recent.",
        "Can we try a newer film?",
        "a more modern movie?",
        "Something released later than my usual.",
        "newer please",
        "Show me a more recent one.",
        "I'd like a newer pick.",
        "Less old, more new, please.",
        "A later film, please.",
        "Something from later years.",
        "More recent than usual, please.",
        "Anything newer?",
    ],
    "older": [
        "Something older, please.",
        "I want a classic.",
        "An older movie than my usual?",
        "Show me an older film.",
        "Can we go older?",
        "Give me something from before my usual era.",
        "older stuff please",
        "I'd like an old movie tonight.",
        "Something vintage?",
        "A classic from earlier years, please.",
        "Pick an older one.",
        "Let's watch something older.",
        "An earlier film, please.",
        "Something from earlier years.",
        "Older than usual, please.",
        "Anything older?",
    ],
    "exclude": [
        "No {genre} this time.",
        "Anything but {genre}.",
        "I'm tired of {genre} movies.",
        "Something that isn't {genre}, please.",
        "no {genre} please",
        "Skip the {genre} for now.",
        "I don't want {genre} tonight.",
        "Can you avoid {genre}?",
        "Enough {genre}; something else.",
        "Not in the mood for {genre}.",
        "Anything except {genre}.",
        "Give me a break from {genre}.",
    ],
    "mood": [
        "I want something {mood}.",
        "In a bad mood, give me something {mood}.",
        "Something {mood} tonight?",
        "Can you find a movie that is {mood}?",
        "{mood} please",
        "I'm in the mood for something {mood}.",
        "Recommend a film that's {mood}.",
        "Let's try something {mood}.",
        "Got anything {mood}?",
        "Feeling like something {mood}.",
        "A {mood} movie would be nice.",
        "Pick something {mood} for me.",
    ],
    "like_title": [
        "Like {title} but {but}.",
        "Something like {title}, but {but}.",
        "I loved {title}; give me one like it but {but}.",
        "More like {title}, only {but}.",
        "similar to {title} but {but}",
        "In the spirit of {title}, but {but}, please.",
        "A movie like {title} that is {but}.",
        "Find me another {title}, but {but}.",
        "Same vibe as {title}, but {but}.",
        "If I liked {title}, what's similar but {but}?",
        "Another one like {title}, {but} this time.",
        "Something close to {title} but {but}.",
    ],
    # follow-ups of a second turn; {title} is the first answer
    "different": [
        "Something different.",
        "Hmm, something completely different?",
        "Not that kind; something else entirely.",
        "Try a different kind of movie.",
        "something different please",
        "Another style altogether?",
        "Different genre this time.",
        "Nah, something different.",
    ],
    "followup_older": [
        "Older.",
        "Something older than that.",
        "older please",
        "Can you go older?",
        "An older one?",
        "Earlier than that, please.",
        "Too new; older.",
        "Something from before that.",
    ],
    "followup_newer": [
        "Newer.",
        "Something newer than that.",
        "newer please",
        "Can you go more recent?",
        "A newer one?",
        "Later than that, please.",
        "Too old; newer.",
        "Something more recent than that.",
    ],
    "no_more": [
        "No more {genre}.",
        "Enough {genre} now.",
        "no more {genre} please",
        "Something without {genre} this time.",
        "Skip {genre} from now on.",
        "Not {genre} again.",
        "Less {genre}, please: none at all.",
        "Drop the {genre}.",
    ],
}
KINDS = ("genre", "two_genres", "decade", "newer", "older", "exclude", "mood", "like_title")
FOLLOW_UPS = ("different", "followup_older", "followup_newer", "no_more")

REPLIES = [
    "You asked for {label}; you watched {title}, so this fits both:",
    "{Label}, as you asked. With {title} in your history, I'd pick:",
    "Going by {title} and your wish for {label}, here is my pick:",
]


def year_of(it: Item) -> int | None:
    return int(it.year) if len(it.year) == 4 and it.year.isdigit() else None


@dataclass(frozen=True)
class Constraint:
    """A request reduced to what the catalogue can check. `label` is the attribute in words as the
    reply names it (after "You asked for"); `keywords` are what a reply must contain to name it."""

    kind: str
    label: str
    keywords: tuple[str, ...]
    slots: dict = field(default_factory=dict, hash=False, compare=False)
    any_of: frozenset[str] = frozenset()
    all_of: frozenset[str] = frozenset()
    none_of: frozenset[str] = frozenset()
    year_min: int | None = None
    year_max: int | None = None
    not_items: frozenset[int] = frozenset()

    def satisfied(self, it: Item) -> bool:
        genres = set(it.genres)
        if it.idx in self.not_items:
            return False
        if (self.any_of and not genres & self.any_of) or not self.all_of <= genres or genres & self.none_of:
            return False
        if self.year_min is None and self.year_max is None:
            return True
        y = year_of(it)
        return y is not None and (self.year_min or y) <= y <= (self.year_max or y)

    def named_in(self, reply: str) -> bool:
        low = reply.lower()
        return all(k.lower() in low for k in self.keywords)


def _median_year(ds: Dataset, history: list[int]) -> int | None:
    years = sorted(y for i in history if (y := year_of(ds.items[i])) is not None)
    return years[len(years) // 2] if years else None


def _genre(kind: str, g: str, **extra) -> Constraint:
    return Constraint(kind, extra.pop("label", g), (g,), {"genre": g}, **extra)


def _decade(d: int) -> Constraint:
    return Constraint("decade", f"the {d}s", (f"{d}s",), {"decade": f"{d}s"}, year_min=d, year_max=d + 9)


def _mood(m: str) -> Constraint:
    any_of, none_of = MOODS[m]
    return Constraint("mood", f"something {m}", (m,), {"mood": m}, any_of=any_of, none_of=none_of)


def _like(ds: Dataset, ref: int, but: str) -> Constraint | None:
    """Like the history item `ref` (sharing a genre with it) but newer or older than it."""
    it, y = ds.items[ref], year_of(ds.items[ref])
    if not it.genres or y is None:
        return None
    limits = {"year_min": y + 1} if but == "newer" else {"year_max": y - 1}
    label = f"something like {it.title} but {but}"
    return Constraint(
        "like_title", label, (it.title, but), {"title": it.title, "but": but}, any_of=frozenset(it.genres), **limits
    )


def derive(kind: str, ds: Dataset, history: list[int], target: int, rng: random.Random) -> Constraint | None:
    """A request of `kind` that the item `target` satisfies, built from its own attributes."""
    it, y, shown = ds.items[target], year_of(ds.items[target]), history[-10:]
    genres = nameable(it.genres)
    if kind == "genre" and genres:
        g = rng.choice(genres)
        return _genre(kind, g, any_of=frozenset({g}))
    if kind == "two_genres" and len(genres) >= 2:
        g1, g2 = rng.sample(genres, 2)
        return Constraint(kind, f"{g1} and {g2}", (g1, g2), {"genre": g1, "genre2": g2}, all_of=frozenset({g1, g2}))
    if kind == "decade" and y is not None:
        return _decade(y // 10 * 10)
    median = _median_year(ds, shown)
    if kind in ("newer", "older") and y is not None and median is not None:
        if kind == "newer" and y > median:
            return Constraint(kind, f"something newer than {median}", ("newer",), year_min=median + 1)
        if kind == "older" and y < median:
            return Constraint(kind, f"something older than {median}", ("older",), year_max=median - 1)
        return None
    if kind == "exclude":
        top = [g for g, _ in _shown_genres(ds, shown).most_common(3) if g not in it.genres]
        return _genre(kind, top[0], label=f"anything but {top[0]}", none_of=frozenset({top[0]})) if top else None
    if kind == "mood":
        fits = [m for m in MOODS if _mood(m).satisfied(it)]
        return _mood(rng.choice(fits)) if fits else None
    if kind == "like_title":
        refs = [i for i in reversed(shown) if set(ds.items[i].genres) & set(it.genres) and year_of(ds.items[i])]
        for ref in refs:
            but = "newer" if y and y > year_of(ds.items[ref]) else "older" if y and y < year_of(ds.items[ref]) else ""
            if but:
                return _like(ds, ref, but)
    return None


def counterfactual(kind: str, ds: Dataset, history: list[int], rng: random.Random) -> Constraint | None:
    """A request of `kind` drawn from the catalogue and the history, whatever the next item is."""
    shown = history[-10:]
    genres = [g for g in GENRE_WORDS if any(g in x.genres for x in ds.items)]
    weights = [sum(g in x.genres for x in ds.items) for g in genres]
    if kind == "genre" and genres:
        g = rng.choices(genres, weights)[0]
        return _genre(kind, g, any_of=frozenset({g}))
    pairs = Counter(tuple(sorted(p)) for x in ds.items for p in _pairs(x.genres)) if kind == "two_genres" else {}
    if pairs:
        (g1, g2) = rng.choices(list(pairs), list(pairs.values()))[0]
        return Constraint(kind, f"{g1} and {g2}", (g1, g2), {"genre": g1, "genre2": g2}, all_of=frozenset({g1, g2}))
    if kind == "decade" and any(year_of(x) is not None for x in ds.items):
        return _decade(rng.choice([1950, 1960, 1970, 1980, 1990]))
    median = _median_year(ds, shown)
    if kind == "newer" and median is not None and median < 1997:
        return Constraint(kind, f"something newer than {median}", ("newer",), year_min=median + 1)
    if kind == "older" and median is not None:
        return Constraint(kind, f"something older than {median}", ("older",), year_max=median - 1)
    if kind == "exclude":
        top = _shown_genres(ds, shown).most_common(1)
        return (
            _genre(kind, top[0][0], label=f"anything but {top[0][0]}", none_of=frozenset({top[0][0]})) if top else None
        )
    if kind == "mood" and genres:
        return _mood(rng.choice(list(MOODS)))
    if kind == "like_title":
        refs = [i for i in shown if year_of(ds.items[i]) and ds.items[i].genres]
        return _like(ds, rng.choice(refs), rng.choice(["newer", "older"])) if refs else None
    return None


def follow_up(kind: str, ds: Dataset, first: int, rng: random.Random) -> Constraint | None:
    """A second-turn request about the first answer `first` (which is never answered again)."""
    it, y, no = ds.items[first], year_of(ds.items[first]), frozenset({first})
    if kind == "different" and it.genres:
        return Constraint(kind, "something different", ("different",), none_of=frozenset(it.genres), not_items=no)
    if kind == "followup_older" and y is not None:
        return Constraint(kind, f"something older than {it.title}", ("older",), year_max=y - 1, not_items=no)
    if kind == "followup_newer" and y is not None and y < 1998:
        return Constraint(kind, f"something newer than {it.title}", ("newer",), year_min=y + 1, not_items=no)
    genres = nameable(it.genres)
    if kind == "no_more" and genres:
        g = rng.choice(genres)
        return _genre(kind, g, label=f"no more {g}", none_of=frozenset({g}), not_items=no)
    return None


def askable(ds: Dataset) -> bool:
    """Whether any request kind has values on this catalogue: a genre people have words for, or a year."""
    return any(nameable(it.genres) or year_of(it) is not None for it in ds.items)


def nameable(genres) -> list[str]:
    """The genres a request can name, in their order (ML-100K's "unknown" has no words to ask with)."""
    return [g for g in genres if g in GENRE_WORDS]


def _shown_genres(ds: Dataset, shown: list[int]) -> Counter:
    """How often each nameable genre occurs in the history shown."""
    return Counter(g for i in shown for g in nameable(ds.items[i].genres))


def _pairs(genres: list[str]) -> list[tuple[str, str]]:
    gs = nameable(genres)
    return [(a, b) for k, a in enumerate(gs) for b in gs[k + 1 :]]


# ---- words ------------------------------------------------------------------------------------------


def phrasings(kind: str, heldout: bool) -> list[str]:
    """The kind's templates on one side of the split: training ones, or the held-out ones."""
    return [
        p
        for i, p in enumerate(PHRASINGS[kind])
        if (i % HELDOUT_PHRASING_EVERY == HELDOUT_PHRASING_EVERY - 1) == heldout
    ]


def typo(text: str, rng: random.Random) -> str:
    """One small slip in a word of four letters or more: two letters swapped, one dropped or doubled."""
    words = [m for m in re.finditer(r"[A-Za-z]{4,}", text)]
    if not words:
        return text
    w = rng.choice(words)
    s, i = w.group(), rng.randrange(1, len(w.group()) - 2)
    slip = rng.choice([s[:i] + s[i + 1] + s[i] + s[i + 2 :], s[:i] + s[i + 1 :], s[:i] + s[i] + s[i:]])
    return text[: w.start()] + slip + text[w.end() :]


def phrase(c: Constraint, rng: random.Random, heldout: bool = False) -> str:
    """What a user might type for `c`: a template of its kind, synonyms, and (training side only)
    sometimes a typo or another casing."""
    slots = dict(c.slots)
    for key in ("genre", "genre2"):
        if key in slots:
            slots[key] = rng.choice(GENRE_WORDS[slots[key]])
    if "mood" in slots:
        slots["mood"] = rng.choice(MOOD_WORDS[slots["mood"]])
    text = rng.choice(phrasings(c.kind, heldout)).format(**slots)
    if not heldout:
        if rng.random() < TYPO_RATE:
            text = typo(text, rng)
        roll = rng.random()
        text = text.lower() if roll < 0.2 else text.upper() if roll < 0.25 else text
    return text


def best_reference(
    ds: Dataset, shown: list[int], target: int, window: int = TITLED, named: Counter[int] | None = None
) -> int:
    """The history item among the newest `window` (the prompt writes titles for the newest TITLED
    only) the answer is closest to: most shared genres; on a tie the one `named` counts least, then
    the newest."""
    genres = set(ds.items[target].genres)
    named = named or Counter()
    return max(reversed(shown[-window:]), key=lambda i: (len(genres & set(ds.items[i].genres)), -named[i]))


def reply(ds: Dataset, c: Constraint, shown: list[int], target: int, rng: random.Random) -> str:
    """A sentence naming the requested attribute and a history title the answer relates to."""
    ref = c.slots.get("title") or ds.items[best_reference(ds, shown, target)].title
    label = c.label
    return rng.choice(REPLIES).format(label=label, Label=label[:1].upper() + label[1:], title=ref)


# ---- targets and samples ------------------------------------------------------------------------------


@dataclass
class Preference:
    """Who likes what, for counterfactual targets outside the user's own future: a (users, items)
    score matrix (the P-Score stage's, when a run has it) or train popularity for every user."""

    scores: np.ndarray | None
    popularity: np.ndarray

    @classmethod
    def build(cls, ds: Dataset, scores: np.ndarray | None = None) -> Preference:
        pop = np.zeros(len(ds.items))
        for u in ds.users:
            np.add.at(pop, u.train_items(), 1)
        return cls(scores, pop)

    def best(self, ds: Dataset, user_pos: int, c: Constraint, avoid: set[int]) -> int | None:
        row = self.scores[user_pos] if self.scores is not None else self.popularity
        fits = [i for i in range(len(ds.items)) if i not in avoid and c.satisfied(ds.items[i])]
        return max(fits, key=lambda i: row[i]) if fits else None


def answer_for(ds: Dataset, pref: Preference, user_pos: int, t: int, c: Constraint, avoid: set[int]) -> int | None:
    """The user's nearest later train item that satisfies `c`, else the preferred catalogue item that
    does. Never one of the user's valid or test items, nor an item in `avoid`."""
    user = ds.users[user_pos]
    train = user.train_items()
    for i in train[t:]:
        if i not in avoid and c.satisfied(ds.items[i]):
            return i
    return pref.best(ds, user_pos, c, avoid | set(user.items))


def request_sample(
    ds: Dataset, index: SIDIndex, pref: Preference, user_pos: int, t: int, history_len: int, rng: random.Random
) -> dict | None:
    """One request sample for the user's train target at position t: derived, counterfactual or
    two turns, in the same chat form the server builds (serve/catalogue.py)."""
    train = ds.users[user_pos].train_items()
    history, nxt = train[:t], train[t]
    shown = history[-history_len:]
    roll = rng.random()
    kind = rng.choice(KINDS)
    if roll < 0.5:
        c = derive(kind, ds, history, nxt, rng)
        target = nxt if c else None
    else:
        c = counterfactual(kind, ds, history, rng)
        target = answer_for(ds, pref, user_pos, t, c, set(history)) if c else None
    if c is None or target is None:
        return None
    first_answer = f"{reply(ds, c, shown, target, rng)} {index.sid(target)}"
    turns = [{"role": "user", "content": phrase(c, rng)}, {"role": "assistant", "content": first_answer}]
    task = "request"
    if roll >= 0.85:  # a follow-up turn on top
        f = follow_up(rng.choice(FOLLOW_UPS), ds, target, rng)
        second = answer_for(ds, pref, user_pos, t, f, set(history) | {target}) if f else None
        if f is None or second is None:
            return None
        turns += [
            {"role": "user", "content": phrase(f, rng)},
            {"role": "assistant", "content": f"{reply(ds, f, shown, second, rng)} {index.sid(second)}"},
        ]
        task = "request_multiturn"
    messages = chat_messages(ds, index, history, history_len, turns)
    return {"messages": messages, "task": task}


def request_samples(
    ds: Dataset, index: SIDIndex, n: int, history_len: int, seed: int, scores: np.ndarray | None = None
) -> list[dict]:
    """n request samples over training users (held-out users are never asked), targets drawn from
    the newest part of each train sequence."""
    rng = random.Random(seed)
    if not askable(ds):
        return []  # the stage reports the task as empty
    pref = Preference.build(ds, scores)
    users = [p for p in range(len(ds.users)) if not is_heldout_user(p)]
    rows: list[dict] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 20 * max(1, n):
            raise ValueError("the data set cannot support these requests")
        u = rng.choice(users)
        train = ds.users[u].train_items()
        if len(train) < 2:
            continue
        row = request_sample(ds, index, pref, u, rng.randrange(max(1, len(train) - 20), len(train)), history_len, rng)
        if row is not None:
            rows.append(row)
    return rows


# ---- reading a reply back -------------------------------------------------------------------------

_LABEL = re.compile(
    r"You asked for (?P<a>.+?); you watched|^(?P<b>.+?), as you asked\.|your wish for (?P<c>.+?), here is my pick",
    re.IGNORECASE,
)


def _genre_named(text: str) -> str | None:
    return next((g for g in GENRE_WORDS if g.lower() == text.strip().lower()), None)


def _title_item(ds: Dataset, title: str) -> int | None:
    return next((it.idx for it in ds.items if it.title.lower() == title.strip().lower()), None)


def parse_label(ds: Dataset, label: str, previous: list[int] | None = None) -> Constraint | None:
    """The constraint a reply's label states (the labels `reply` writes), or None when it states
    none the catalogue can check. `previous`: the items of the answer before, for follow-ups."""
    low = label.strip().lower()
    prev = previous[0] if previous else None
    if m := re.fullmatch(r"something like (.+) but (newer|older)", low):
        ref = _title_item(ds, m.group(1))
        return _like(ds, ref, m.group(2)) if ref is not None else None
    if (m := re.fullmatch(r"(anything but|no more) (.+)", low)) and (g := _genre_named(m.group(2))):
        kind = "exclude" if m.group(1) == "anything but" else "no_more"
        return _genre(kind, g, label=f"{m.group(1)} {g}", none_of=frozenset({g}))
    if low == "something different" and prev is not None:
        return follow_up("different", ds, prev, random.Random(0))
    if m := re.fullmatch(r"something (older|newer) than (\d{4})", low):
        y = int(m.group(2))
        limits = {"year_max": y - 1} if m.group(1) == "older" else {"year_min": y + 1}
        return Constraint(m.group(1), low, (m.group(1),), **limits)
    if (m := re.fullmatch(r"something (older|newer) than (.+)", low)) and (
        ref := _title_item(ds, m.group(2))
    ) is not None:
        return follow_up(f"followup_{m.group(1)}", ds, ref, random.Random(0))
    if m := re.fullmatch(r"the (\d{3}0)s", low):
        return _decade(int(m.group(1)))
    if (m := re.fullmatch(r"something (.+)", low)) and m.group(1) in MOODS:
        return _mood(m.group(1))
    if (
        (m := re.fullmatch(r"(.+) and (.+)", low))
        and (g1 := _genre_named(m.group(1)))
        and (g2 := _genre_named(m.group(2)))
    ):
        return Constraint(
            "two_genres", f"{g1} and {g2}", (g1, g2), {"genre": g1, "genre2": g2}, all_of=frozenset({g1, g2})
        )
    # the model's own wording of a genre ("something Sci-Fi", "more Comedy") is still that genre
    if g := _genre_named(re.sub(r"^(?:something|some|more|a|an)\s+", "", low)):
        return _genre("genre", g, any_of=frozenset({g}))
    return None


def parse_reply(ds: Dataset, reply: str, previous: list[int] | None = None) -> Constraint | None:
    """What the model's reply says it heard, as a checkable constraint: the served chat then keeps
    its items to those that satisfy it (the understanding is the model's, the check the catalogue's)."""
    m = _LABEL.search(reply or "")
    if not m:
        return None
    return parse_label(ds, next(g for g in m.groups() if g), previous)


def unsatisfying(ds: Dataset, c: Constraint | None) -> set[int]:
    """Items that do not satisfy `c`; empty when `c` is None or nothing would be left."""
    if c is None:
        return set()
    out = {it.idx for it in ds.items if not c.satisfied(it)}
    return out if len(out) < len(ds.items) else set()


def why(ds: Dataset, items: list[int], c: Constraint | None, history: list[int], window: int = 10) -> list[str]:
    """Why each answer fits, read off the data: the request it meets and the recent history item it
    is closest to (most shared genres). Among equally close ones, an item not yet named for an earlier
    answer is named, then the newest, so a list does not cite the same title for every answer."""
    named: Counter[int] = Counter()
    out = []
    for item in items:
        it = ds.items[item]
        parts = [f"fits {c.label}"] if c is not None and c.satisfied(it) else []
        if history:
            ref = best_reference(ds, history, item, window, named)
            shared = [g for g in it.genres if g in ds.items[ref].genres]
            if shared:
                named[ref] += 1
                parts.append(f"{'/'.join(shared)} like {ds.items[ref].title}")
        year = f" ({it.year})" if it.year else ""
        out.append(f"{it.title}{year}: " + ("; ".join(parts) if parts else ", ".join(it.genres)))
    return out
