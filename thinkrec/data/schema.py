"""A data set's config: a YAML file that gives the columns of the user's files their roles (RecBole's
atomic files plus a dataset YAML are the model). Parsed into typed dataclasses; an unknown or mistyped
key is an error that names it, so a typo never silently falls back to a default.

    name: acme-shop
    files: {inter: acme.inter, item: acme.item}        # RecBole atomic, .csv, .tsv, .jsonl or .parquet
    noun: {one: product, many: products}
    verb: {past: bought, present: buy}
    interactions: {user: customer, item: sku, time: {field: ts, format: iso8601}, feedback: {kind: implicit}}
    filter: {user_min: 5, item_min: 5, on_missing_item: drop}
    items:
      id: sku
      title: title
      text: "{title}. Brand: {brand}."
      attributes:
        brand: {field: brand, kind: categorical, word: brand, primary: true}
        price: {field: price, kind: numeric, unit: "$"}
    rules: {flagged: {attribute: brand, value: HouseBrand}}

docs/own_data.md is the reference of every key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from thinkrec.errors import ThinkRecError

SHIPPED = Path(__file__).with_name("datasets")  # the configs that come with ThinkRec: ml-100k.yaml, ...
TIME_FORMATS = ("unix", "iso8601")  # or any strftime format, e.g. "%d/%m/%Y %H:%M"
FEEDBACK_KINDS = ("implicit", "rating", "events")
ATTRIBUTE_KINDS = ("categorical", "list", "numeric", "text")
MISSING_ITEM = ("error", "drop", "keep")
DEDUP = ("none", "first", "last")


@dataclass
class Files:
    inter: str
    item: str = ""
    user: str = ""
    root: str = ""  # folder the file names are relative to; "" = the config's folder; "pkg:<package>/<path>"
    sep: str = ""  # column separator of .csv/.tsv/.txt files; "" = from the extension (RecBole files: tab)
    encoding: str = "utf-8"


@dataclass
class Words:
    one: str = "item"
    many: str = "items"


@dataclass
class Verb:
    past: str = "interacted with"
    present: str = "interact with"


@dataclass
class Time:
    field: str
    format: str = "unix"  # unix (seconds) | iso8601 | a strftime format


@dataclass
class Feedback:
    kind: str = "implicit"  # implicit | rating | events
    field: str = ""  # the rating or event-type column
    like: float = 0.0  # rating: at least this is a like
    love: float = 0.0  # rating: at least this is a love
    events: dict[str, float] = dataclasses.field(default_factory=dict)  # events: type -> strength (1 = weakest)


@dataclass
class Interactions:
    user: str
    item: str
    time: Time
    feedback: Feedback = dataclasses.field(default_factory=Feedback)


@dataclass
class Filter:
    user_min: int = 5  # k-core: users with fewer interactions go (repeated with items until stable)
    item_min: int = 5
    dedup: str = "none"  # none | first | last: repeated (user, item) pairs
    on_missing_item: str = "error"  # error | drop | keep: interactions whose item the item table lacks


@dataclass
class Attribute:
    field: str
    kind: str = "categorical"  # categorical | list | numeric | text
    word: str = ""  # how prompts name it ("genre", "brand"); "" = the attribute's name
    sep: str = ","  # list: separator of the values inside the column
    primary: bool = False  # the attribute items are grouped by (at most one): genres for MovieLens
    time: bool = False  # numeric: the item's own date (a release year), shown after its title
    unit: str = ""  # numeric: shown before the number ("$")
    bucket_width: float = 0.0  # numeric: buckets of this width (10 for decades); 0 = quantiles
    na: list[str] = field(default_factory=list)  # values that mean "not known" (besides an empty one)
    requestable: bool = True  # the chat may be asked to include or exclude its values
    qa: bool = True  # QA tasks ask about it


@dataclass
class Items:
    id: str
    title: str = ""  # "" = the id
    text: str = ""  # content template, e.g. "{title}. Brand: {brand}."; "" = "<title> (<time>). <Word>s: <primary>."
    image: str = ""  # column with an image path per item (relative to files.root)
    attributes: dict[str, Attribute] = dataclasses.field(default_factory=dict)


@dataclass
class Users:
    id: str
    attributes: list[str] = dataclasses.field(default_factory=list)  # columns kept as the user's profile


@dataclass
class Flagged:
    attribute: str
    value: str = ""  # categorical/list: items with this value
    above: float | None = None  # numeric: items above this


@dataclass
class Rules:
    flagged: Flagged | None = None  # the business rule ECPO damps


@dataclass
class DatasetSchema:
    name: str
    files: Files
    interactions: Interactions
    items: Items
    noun: Words = field(default_factory=Words)
    verb: Verb = field(default_factory=Verb)
    filter: Filter = field(default_factory=Filter)
    users: Users | None = None
    rules: Rules = field(default_factory=Rules)
    source: str = ""  # the YAML file it was read from (set by the loader)

    def primary(self) -> tuple[str, Attribute] | None:
        return next(((n, a) for n, a in self.items.attributes.items() if a.primary), None)

    def time_attribute(self) -> tuple[str, Attribute] | None:
        return next(((n, a) for n, a in self.items.attributes.items() if a.time), None)

    def path(self, which: str) -> Path | None:
        """The resolved path of files.inter / item / user (None where not given)."""
        name = getattr(self.files, which)
        if not name:
            return None
        return resolve_root(self.files.root, self.source) / name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_root(root: str, source: str) -> Path:
    if root.startswith("pkg:"):
        package, _, rest = root[4:].partition("/")
        spec = importlib.util.find_spec(package)  # find the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise ThinkRecError(f"files.root {root!r}: the Python package {package!r} is not installed")
        return Path(spec.submodule_search_locations[0]) / rest
    base = Path(source).parent if source else Path.cwd()
    return base / root if root else base


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def config_path(dataset: str) -> Path:
    """A shipped data set's name (ml-100k) or the path of a YAML file."""
    if dataset.endswith((".yaml", ".yml")):
        path = Path(dataset)
        if not path.exists():
            raise ThinkRecError(f"dataset config {path} does not exist")
        return path
    path = SHIPPED / f"{dataset}.yaml"
    if not path.exists():
        names = ", ".join([*shipped_names(), "digits"])
        raise ThinkRecError(f"dataset {dataset!r} is not supported; choose one of {names} or give a .yaml config")
    return path


def load_schema(dataset: str) -> DatasetSchema:
    import yaml

    path = config_path(dataset)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ThinkRecError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ThinkRecError(f"{path}: the config must be a mapping of keys (name, files, interactions, items, ...)")
    schema = _build(DatasetSchema, raw, str(path), "")
    schema.source = str(path.resolve())
    validate(schema, str(path))
    return schema


def schema_from_dict(raw: dict) -> DatasetSchema:
    """The config a run holds (data/schema.json, `DatasetSchema.to_dict`) as the typed schema."""
    raw = dict(raw)
    source = raw.pop("source", "")
    schema = _build(DatasetSchema, raw, source or "data/schema.json", "")
    schema.source = source
    return schema


def _build(cls: type, raw: Any, path: str, where: str) -> Any:
    """raw YAML -> the dataclass `cls`, naming the key of every unknown, missing or mistyped value."""
    if not isinstance(raw, dict):
        raise ThinkRecError(f"{path}: {where or 'the config'} must be a mapping, not {raw!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ThinkRecError(
            f"{path}: unknown key {where}{unknown[0]!r}; {where or 'the top level'} takes {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ThinkRecError(f"{path}: {key} is required")
            continue
        kwargs[name] = _value(hints[name], raw[name], path, key)
    return cls(**kwargs)


def _value(hint: Any, value: Any, path: str, key: str) -> Any:
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _value(options[0], value, path, key)
    if dataclasses.is_dataclass(hint):
        if hint is Time and isinstance(value, str):  # time: ts  is short for  time: {field: ts}
            value = {"field": value}
        if hint is Feedback and isinstance(value, str):  # feedback: implicit
            value = {"kind": value}
        return _build(hint, value, path, key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ThinkRecError(f"{path}: {key} must be a mapping")
        _, vtype = typing.get_args(hint)
        return {str(k): _value(vtype, v, path, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ThinkRecError(f"{path}: {key} must be a list")
        return [str(v) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ThinkRecError(f"{path}: {key} must be true or false, not {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (hint is int and value != int(value)):
            raise ThinkRecError(f"{path}: {key} must be a number{' (whole)' if hint is int else ''}, not {value!r}")
        return hint(value)
    if hint is str:
        if isinstance(value, dict | list) or value is None:
            raise ThinkRecError(f"{path}: {key} must be a string, not {value!r}")
        return str(value)
    return value


def validate(s: DatasetSchema, path: str) -> None:
    """What the types alone do not say: allowed values, and names that must refer to each other."""

    def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise ThinkRecError(f"{path}: {key} is {value!r}; use one of {', '.join(allowed)}")

    fb = s.interactions.feedback
    choice("interactions.feedback.kind", fb.kind, FEEDBACK_KINDS)
    if fb.kind in ("rating", "events") and not fb.field:
        raise ThinkRecError(f"{path}: interactions.feedback.field names the {fb.kind} column")
    if fb.kind == "rating" and not 0 < fb.like <= fb.love:
        raise ThinkRecError(f"{path}: interactions.feedback needs 0 < like <= love (rating thresholds)")
    if fb.kind == "events" and not fb.events:
        raise ThinkRecError(f"{path}: interactions.feedback.events maps each event type to a strength")
    fmt = s.interactions.time.format
    if fmt not in TIME_FORMATS and "%" not in fmt:
        raise ThinkRecError(f"{path}: interactions.time.format is {fmt!r}; use unix, iso8601 or a strftime format")
    choice("filter.dedup", s.filter.dedup, DEDUP)
    choice("filter.on_missing_item", s.filter.on_missing_item, MISSING_ITEM)
    if s.filter.user_min < 3:
        raise ThinkRecError(f"{path}: filter.user_min must be >= 3 (leave-last-out needs train, valid and test items)")
    if s.filter.item_min < 1:
        raise ThinkRecError(f"{path}: filter.item_min must be >= 1")
    if bool(s.files.user) != (s.users is not None):
        raise ThinkRecError(f"{path}: files.user and users: go together (the user table and its id column)")
    if s.items.attributes and not s.files.item:
        raise ThinkRecError(f"{path}: items.attributes need an item table (files.item)")
    for name, a in s.items.attributes.items():
        choice(f"items.attributes.{name}.kind", a.kind, ATTRIBUTE_KINDS)
        if a.time and a.kind != "numeric":
            raise ThinkRecError(f"{path}: items.attributes.{name}: time: true needs kind numeric")
        if a.primary and a.kind not in ("categorical", "list"):
            raise ThinkRecError(f"{path}: items.attributes.{name}: primary: true needs kind categorical or list")
    for flag in ("primary", "time"):
        marked = [n for n, a in s.items.attributes.items() if getattr(a, flag)]
        if len(marked) > 1:
            raise ThinkRecError(f"{path}: {flag}: true is set on {', '.join(marked)}; at most one attribute")
    rule = s.rules.flagged
    if rule is not None:
        attr = s.items.attributes.get(rule.attribute)
        if attr is None:
            raise ThinkRecError(f"{path}: rules.flagged.attribute {rule.attribute!r} is not in items.attributes")
        if (attr.kind == "numeric") != (rule.above is not None) or (attr.kind != "numeric" and not rule.value):
            raise ThinkRecError(f"{path}: rules.flagged: a numeric attribute takes above:, any other a value:")


def dataset_words(schema: dict) -> dict:
    """The Dataset fields a resolved config (as data/schema.json holds it) gives its prompts: the
    noun, the verb, the primary attribute's word and the strong-signal question."""
    attributes = schema["items"].get("attributes") or {}
    primary = next((name for name, a in attributes.items() if a.get("primary")), "")
    fb = schema["interactions"].get("feedback") or {}
    strong = None
    if fb.get("kind") == "rating" and fb.get("like"):
        strong = (f"rate it {fb['like']:g} stars or more", float(fb["like"]))
    elif fb.get("kind") == "events" and len(fb.get("events") or {}) > 1:
        name, value = max(fb["events"].items(), key=lambda kv: kv[1])
        strong = (f"{name} it", float(value))
    return {
        "noun": (schema["noun"]["one"], schema["noun"]["many"]),
        "verb": (schema["verb"]["past"], schema["verb"]["present"]),
        "primary_word": (attributes.get(primary) or {}).get("word") or primary or "category",
        "strong_signal": strong,
    }
