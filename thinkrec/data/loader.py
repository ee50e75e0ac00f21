"""Any data set through one loader: the config (thinkrec/data/schema.py) says which column plays which
role; this reads the files with pandas, parses times and feedback, drops or refuses interactions with
unknown items, removes repeats, filters to the k-core, and orders each user's items by time (equal
times keep their file order: 75,772 of MovieLens-100K's 100,000 rows share a user and a timestamp
with another row, so the tie-break is part of the split). Every problem names its file, line and
column; nothing is written here (thinkrec/data/stage.py writes the run's files)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from thinkrec.data.records import Dataset, Item, User
from thinkrec.data.schema import Attribute, DatasetSchema, dataset_words
from thinkrec.data.tables import LINE, numbers, read_table, require_columns
from thinkrec.errors import ThinkRecError

_CHUNK = re.compile(r"([0-9]+)")


def natural_key(s: str) -> tuple:
    """Ids in human order: "u2" before "u10", "7" before "12"; the string itself breaks ties."""
    parts = tuple((0, int(p), "") if p.isdecimal() else (1, 0, p) for p in _CHUNK.split(s) if p)
    return (parts, s)


@dataclass
class LoadReport:
    """What the loader saw on the way: counts of what it dropped, and warnings that did not stop it."""

    rows: int = 0
    missing_item_rows: int = 0
    duplicate_rows: int = 0
    filtered_rows: int = 0
    warnings: list[str] = field(default_factory=list)


def load_from_schema(schema: DatasetSchema, max_users: int = 0) -> tuple[Dataset, LoadReport]:
    report = LoadReport()
    inter_path = schema.path("inter")
    inter = read_table(inter_path, schema.files.sep, schema.files.encoding)
    report.rows = len(inter)
    ix, fb = schema.interactions, schema.interactions.feedback
    roles = {"interactions.user": ix.user, "interactions.item": ix.item, "interactions.time.field": ix.time.field}
    require_columns(inter, inter_path, roles | {"interactions.feedback.field": fb.field})
    events = pd.DataFrame(
        {
            "user": inter[ix.user].str.strip(),
            "item": inter[ix.item].str.strip(),
            "ts": _times(inter, ix.time.field, ix.time.format, inter_path),
            "feedback": _feedback(inter, schema, inter_path),
            "line": inter[LINE],
        }
    )
    for role in ("user", "item"):
        empty = events[role] == ""
        if empty.any():
            line = events.loc[empty, "line"].iloc[0]
            column = getattr(ix, role)
            raise ThinkRecError(f"{inter_path} line {line}: empty {role} id in column {column!r}")

    meta = _item_table(schema) if schema.files.item else None
    if meta is not None:
        missing = ~events["item"].isin(meta.index)
        report.missing_item_rows = int(missing.sum())
        if report.missing_item_rows:
            first = events[missing].iloc[0]
            what = (
                f"{report.missing_item_rows} interactions name items that {schema.path('item')} does not have "
                f"(first: {first['item']!r} at {inter_path} line {first['line']})"
            )
            if schema.filter.on_missing_item == "error":
                raise ThinkRecError(what + "; set filter.on_missing_item to drop or keep")
            action = "dropped" if schema.filter.on_missing_item == "drop" else "kept, titled 'item <id>'"
            report.warnings.append(f"{what}; {action}")
            if schema.filter.on_missing_item == "drop":
                events = events[~missing]

    if schema.filter.dedup != "none":
        before = len(events)
        # first / last in time (equal times in file order), not in the file
        events = events.sort_values(["user", "ts", "line"], kind="stable")
        events = events.drop_duplicates(["user", "item"], keep=schema.filter.dedup).sort_values("line")
        report.duplicate_rows = before - len(events)

    if max_users > 0:
        keep = sorted(events["user"].unique(), key=natural_key)[:max_users]
        events = events[events["user"].isin(keep)]
    before = len(events)
    events = k_core(events, schema.filter.user_min, schema.filter.item_min)
    report.filtered_rows = before - len(events)
    if events.empty:
        raise ThinkRecError(
            f"no interactions left after the k-core filter (users >= {schema.filter.user_min}, "
            f"items >= {schema.filter.item_min} interactions); lower filter.user_min / filter.item_min"
        )
    items = _items(schema, meta, sorted(events["item"].unique(), key=natural_key))
    users = _users(schema, events, {it.item_id: it.idx for it in items})
    return Dataset(schema.name, items, users, **dataset_words(dataclasses.asdict(schema))), report


def k_core(events: pd.DataFrame, user_min: int, item_min: int) -> pd.DataFrame:
    """Drop users and items with too few interactions until none is left to drop."""
    while True:
        uc = events["user"].map(events["user"].value_counts())
        ic = events["item"].map(events["item"].value_counts())
        kept = events[(uc >= user_min) & (ic >= item_min)]
        if len(kept) == len(events):
            return kept
        events = kept


def _times(df: pd.DataFrame, column: str, fmt: str, path: Path) -> np.ndarray:
    raw = df[column].str.strip()
    if fmt == "unix":
        return numbers(df, column, path, "time").astype(float).astype(np.int64).to_numpy()
    parsed = pd.to_datetime(raw, format="ISO8601" if fmt == "iso8601" else fmt, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        row = df[bad].iloc[0]
        raise ThinkRecError(f"{path} line {row[LINE]}: time column {column!r} has {row[column]!r}, not {fmt} time")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "s")).to_numpy(np.int64)  # unix seconds


def _feedback(df: pd.DataFrame, schema: DatasetSchema, path: Path) -> np.ndarray:
    """Each interaction's strength: 1 (implicit), the rating, or the event type's strength."""
    fb = schema.interactions.feedback
    if fb.kind == "implicit":
        return np.ones(len(df))
    if fb.kind == "rating":
        return numbers(df, fb.field, path, "rating").to_numpy(float)
    values = df[fb.field].str.strip().map(fb.events)
    bad = values.isna()
    if bad.any():
        row = df[bad].iloc[0]
        raise ThinkRecError(
            f"{path} line {row[LINE]}: event column {fb.field!r} has {row[fb.field]!r}; "
            f"interactions.feedback.events knows {', '.join(fb.events)}"
        )
    return values.to_numpy(float)


def _item_table(schema: DatasetSchema, path: Path | None = None) -> pd.DataFrame:
    """The item table (the config's files.item, or `path` in the same columns), indexed by item id."""
    path = path or schema.path("item")
    df = read_table(path, schema.files.sep, schema.files.encoding)
    its = schema.items
    roles = {"items.id": its.id, "items.title": its.title, "items.image": its.image}
    roles |= {f"items.attributes.{n}.field": a.field for n, a in its.attributes.items()}
    require_columns(df, path, roles)
    df[its.id] = df[its.id].str.strip()
    dup = df[its.id].duplicated(keep=False)
    if dup.any():
        first = df[dup].iloc[0][its.id]
        lines = df.loc[df[its.id] == first, LINE].tolist()
        raise ThinkRecError(f"{path} lines {', '.join(map(str, lines))}: item id {first!r} appears more than once")
    for name, a in its.attributes.items():
        if a.kind == "numeric":
            text = df[a.field].str.strip()
            values = pd.to_numeric(text, errors="coerce")
            bad = values.isna() & (text != "") & ~text.isin(a.na)
            if bad.any():
                row = df[bad].iloc[0]
                raise ThinkRecError(
                    f"{path} line {row[LINE]}: attribute {name!r} (column {a.field!r}) has {row[a.field]!r}, "
                    "not a number"
                )
    return df.set_index(its.id, drop=False)


def new_items(schema: DatasetSchema, path: Path, known_ids: set[str], first_idx: int) -> list[Item]:
    """The items of a further item file, in the columns of the data set's item table, numbered on
    from `first_idx` (a growing catalogue: `thinkrec add-items`). An id already known is an error."""
    df = _item_table(schema, path)
    ids = df[schema.items.id].tolist()
    if not ids:
        raise ThinkRecError(f"{path}: no items")
    known = [i for i in ids if i in known_ids]
    if known:
        line = df.loc[df[schema.items.id] == known[0], LINE].iloc[0]
        raise ThinkRecError(
            f"{path} line {line}: item id {known[0]!r} is in the catalogue already ({len(known)} such ids)"
        )
    items = _items(schema, df, ids)
    for k, it in enumerate(items):
        it.idx = first_idx + k
    return items


def _attribute(a: Attribute, raw: object) -> object:
    if isinstance(raw, list):  # a JSONL array or a Parquet list
        values = [str(v).strip() for v in raw if str(v).strip()]
        return values if a.kind == "list" else a.sep.join(values)
    raw = "" if raw is None else str(raw).strip()
    if a.kind == "list":
        parts = raw.split() if a.sep.strip() == "" else raw.split(a.sep)
        return [p.strip() for p in parts if p.strip()]
    if a.kind == "numeric":
        value = float(raw) if raw and raw not in a.na else None
        return value if value is not None and math.isfinite(value) else None  # "NaN" / "inf": not known
    return raw


def _items(schema: DatasetSchema, meta: pd.DataFrame | None, item_ids: list[str]) -> list[Item]:
    its = schema.items
    primary, timed = schema.primary(), schema.time_attribute()
    word = (primary[1].word or primary[0]) if primary else ""
    n = len(item_ids)
    # plain column lists: a pandas row lookup per item would take a minute at 10^6 items
    rows = meta.reindex(item_ids) if meta is not None else pd.DataFrame(index=item_ids)
    known = rows[its.id].notna().tolist() if meta is not None else [False] * n
    column = {c: rows[c].tolist() if meta is not None else [""] * n for c in {its.title, *_fields(schema)} if c}
    items = []
    for idx, iid in enumerate(item_ids):
        ok = known[idx]
        title = (str(column[its.title][idx]).strip() if ok and its.title else "") or (iid if ok else f"item {iid}")
        attrs = {name: _attribute(a, column[a.field][idx]) if ok else None for name, a in its.attributes.items()}
        year = ""
        if ok and timed:  # the number as a number (1990, not 1990.0); a value the config calls unknown as written
            value = attrs[timed[0]]
            year = f"{value:g}" if isinstance(value, float) else str(column[timed[1].field][idx]).strip()
        genres = attrs.get(primary[0]) if primary else None
        genres = [] if not genres else (genres if isinstance(genres, list) else [genres])
        content = _content(its.text, title, year, word, genres, attrs, f"item {iid}")
        items.append(
            Item(idx=idx, item_id=iid, title=title, year=year, genres=genres, attributes=attrs, content=content)
        )
    return items


def _fields(schema: DatasetSchema) -> list[str]:
    return [a.field for a in schema.items.attributes.values()]


def _content(template: str, title: str, year: str, word: str, primary: list[str], attrs: dict, where: str) -> str:
    if not template:  # "<title> (<time>). <Word>s: <values>."
        text = f"{title} ({year})" if year else title
        return f"{text}. {plural(word).capitalize()}: {', '.join(primary) or 'unknown'}." if word else f"{text}."
    values = {n: ", ".join(v) if isinstance(v, list) else ("" if v is None else f"{v:g}" if isinstance(v, float) else v)
              for n, v in attrs.items()}  # fmt: skip
    try:
        return template.format_map({**values, "title": title})
    except (KeyError, IndexError, ValueError) as e:
        raise ThinkRecError(f"items.text {template!r}: {e} is not an attribute ({where})") from None


def plural(word: str) -> str:
    """English plural of an attribute's word: genre -> genres, category -> categories, series -> series."""
    if word.endswith(("s", "x", "ch", "sh")):
        return word if word.endswith("ies") or word.endswith("series") else word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _users(schema: DatasetSchema, events: pd.DataFrame, idx_of: dict[str, int]) -> list[User]:
    profiles: dict[str, dict[str, str]] = {}
    if schema.files.user and schema.users is not None:
        path = schema.path("user")
        table = read_table(path, schema.files.sep, schema.files.encoding)
        require_columns(
            table, path, {"users.id": schema.users.id} | {f"users.attributes[{c}]": c for c in schema.users.attributes}
        )
        cols = schema.users.attributes
        for uid, *vals in table[[schema.users.id, *cols]].itertuples(index=False):
            profiles[str(uid).strip()] = dict(zip(cols, vals, strict=True))
    order = {u: r for r, u in enumerate(sorted(events["user"].unique(), key=natural_key))}
    events = events.assign(rank=events["user"].map(order), idx=events["item"].map(idx_of))
    events = events.sort_values(["rank", "ts", "line"], kind="stable")
    ranks = events["rank"].to_numpy()
    bounds = np.flatnonzero(np.diff(ranks)) + 1
    users = []
    uids = sorted(order, key=order.get)
    cols = [np.split(events[c].to_numpy(), bounds) for c in ("idx", "feedback", "ts")]
    for uid, items, feedback, ts in zip(uids, *cols, strict=True):
        users.append(User(uid, items.tolist(), feedback.tolist(), ts.tolist(), profiles.get(uid, {})))
    return users
