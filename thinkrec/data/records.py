"""What every stage reads: items (a dense index, the data set's id, a title, attributes), users
(their items oldest first, with feedback and times) and the leave-last-out split (test target =
last item, valid target = second to last, train = the rest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thinkrec.errors import ThinkRecError


@dataclass
class Item:
    idx: int  # dense index 0..N-1, used everywhere downstream
    item_id: str  # the data set's own id
    title: str
    year: str  # the item's time attribute ("time: true" in the data set's config), "" if none
    genres: list[str]  # the values of its primary attribute ("primary: true")
    attributes: dict[str, Any] = field(default_factory=dict)  # every configured attribute, by name
    content: str = ""  # the content text rendered from the config's template; "" = the default form

    def text(self) -> str:
        """The content text the item embedding is computed from."""
        if self.content:
            return self.content
        year = f" ({self.year})" if self.year else ""
        return f"{self.title}{year}. Genres: {', '.join(self.genres) or 'unknown'}."


@dataclass
class User:
    user_id: str
    items: list[int]  # item idx, oldest first
    ratings: list[float]
    timestamps: list[int]
    profile: dict[str, str] = field(default_factory=dict)

    def train_items(self) -> list[int]:
        return self.items[:-2]

    def history_for(self, split: str) -> list[int]:
        """What the model may see when predicting the target of `split`."""
        return {"train": self.items[:-3], "valid": self.items[:-2], "test": self.items[:-1]}[split]

    def target_for(self, split: str) -> int:
        return {"train": self.items[-3], "valid": self.items[-2], "test": self.items[-1]}[split]


@dataclass
class Dataset:
    name: str
    items: list[Item]
    users: list[User]
    noun: tuple[str, str] = ("movie", "movies")  # what an item is called, one and many (the config's noun)
    verb: tuple[str, str] = ("watched", "watch")  # what a user did, past and present (the config's verb)
    primary_word: str = "genre"  # how questions name the primary attribute (its config's `word`)
    # a question about a strong signal, and the feedback strength that answers it Yes
    # (ratings: "rate it 4 stars or more" at the like threshold; events: "purchase it"); None: none
    strong_signal: tuple[str, float] | None = ("rate it 4 stars or more", 4.0)

    def item_by_id(self, item_id: str) -> Item:
        for it in self.items:
            if it.item_id == item_id:
                return it
        raise ThinkRecError(f"unknown item id {item_id!r} (catalogue has {len(self.items)} items)")

    def user_by_id(self, user_id: str) -> User:
        for u in self.users:
            if u.user_id == user_id:
                return u
        raise ThinkRecError(f"unknown user id {user_id!r}")

    def stats(self) -> dict[str, float]:
        n_inter = sum(len(u.items) for u in self.users)
        return {
            "users": len(self.users),
            "items": len(self.items),
            "interactions": n_inter,
            "density": n_inter / max(1, len(self.users) * len(self.items)),
            "avg_seq_len": n_inter / max(1, len(self.users)),
        }
