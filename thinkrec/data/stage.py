"""Stage `data`: a data set (a shipped name, a YAML config over the user's files, or the digits image
catalogue) into the run directory: data/items.jsonl, data/users.jsonl, data/stats.json and
data/schema.json, the resolved config that later stages and the server read from the run."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from thinkrec.config import DataConfig
from thinkrec.data.loader import load_from_schema
from thinkrec.data.records import Dataset, Item, User
from thinkrec.data.schema import DatasetSchema, dataset_words, load_schema, validate
from thinkrec.data.tables import write_atomic
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir

SCHEMA_FILE = "schema.json"


def schema_for(cfg: DataConfig) -> DatasetSchema:
    """The data set's config, with the command line's overrides (--data-dir, --min-core)."""
    if cfg.dataset == "digits":
        raise ThinkRecError(
            "digits is an image catalogue without a config: --check and --export-recbole need a data set"
        )
    schema = load_schema(cfg.dataset)
    if cfg.data_dir:
        schema.files.root = str(Path(cfg.data_dir).resolve())
    if cfg.min_core > 0:
        schema.filter.user_min = schema.filter.item_min = cfg.min_core
        validate(schema, f"--min-core {cfg.min_core}")
    return schema


def load_dataset(cfg: DataConfig) -> Dataset:
    return load_from_schema(schema_for(cfg), cfg.max_users)[0]


def prepare(cfg: DataConfig, run: RunDir) -> Dataset:
    """Stage `data`: load, filter, split, and write the run's data files (nothing is written when
    the data set has a problem)."""
    if cfg.dataset == "digits":  # an image catalogue (thinkrec/data/digits.py)
        from thinkrec.data.digits import prepare_digits

        ds, schema = prepare_digits(cfg, run), None
    else:
        schema = schema_for(cfg)
        ds, _ = load_from_schema(schema, cfg.max_users)
    # written beside the run's data/ and swapped in whole: a failure leaves the earlier data as it was
    out = run.sub("data")
    tmp = out.with_name("data.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for extra in ("images", "queries", "labels.json"):  # digits writes its pictures into data/ first
        if (out / extra).exists():
            (out / extra).rename(tmp / extra)
    with (tmp / "items.jsonl").open("w") as f:
        for it in ds.items:
            f.write(json.dumps(asdict(it)) + "\n")
    with (tmp / "users.jsonl").open("w") as f:
        for u in ds.users:
            f.write(json.dumps(asdict(u)) + "\n")
    stats = ds.stats()
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    if schema is not None:
        (tmp / SCHEMA_FILE).write_text(json.dumps(schema.to_dict(), indent=1))
    shutil.rmtree(out)
    tmp.rename(out)
    run.record("data", cfg, {"items": "data/items.jsonl", "users": "data/users.jsonl"}, stats=stats)
    return ds


def load_prepared(run: RunDir) -> Dataset:
    entry = run.require("data", "data")
    out = run.path / "data"
    try:
        items = [Item(**json.loads(line)) for line in (out / "items.jsonl").open()]
        users = [User(**json.loads(line)) for line in (out / "users.jsonl").open()]
    except (json.JSONDecodeError, TypeError) as e:
        raise ThinkRecError(f"run directory {run.path}: data files are corrupt ({e}); re-run `thinkrec data`") from None
    schema = load_run_schema(run)
    if schema is None:  # digits, and runs prepared before data sets had configs
        return Dataset(entry["config"]["dataset"], items, users)
    return Dataset(schema["name"], items, users, **dataset_words(schema))


def load_run_schema(run: RunDir) -> dict | None:
    """The resolved data set config the run was prepared with (None for digits and older runs)."""
    path = run.path / "data" / SCHEMA_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check(cfg: DataConfig) -> str:
    """`thinkrec data --check`: the statistics a user reads before training, or the first problem."""
    schema = schema_for(cfg)
    ds, report = load_from_schema(schema, cfg.max_users)
    lengths = np.array([len(u.items) for u in ds.users])
    stats = ds.stats()
    lines = [
        f"data set {schema.name} ({schema.source})",
        f"  rows read          {report.rows:,}",
        f"  unknown items      {report.missing_item_rows:,} rows ({schema.filter.on_missing_item})",
        f"  repeats removed    {report.duplicate_rows:,} (dedup: {schema.filter.dedup})",
        f"  k-core removed     {report.filtered_rows:,} (users >= {schema.filter.user_min}, "
        f"items >= {schema.filter.item_min})",
        f"  users              {stats['users']:,}",
        f"  items              {stats['items']:,}",
        f"  interactions       {stats['interactions']:,}",
        f"  density            {stats['density']:.4%}",
        "  history length     " + "  ".join(f"p{q}={np.percentile(lengths, q):.0f}" for q in (5, 25, 50, 75, 95)),
    ]
    for name, a in schema.items.attributes.items():
        filled = sum(1 for it in ds.items if it.attributes.get(name) not in (None, "", []))
        distinct = {v for it in ds.items for v in _values(it.attributes.get(name))}
        lines.append(f"  attribute {name:9s} {a.kind:11s} coverage {filled / max(1, len(ds.items)):.1%}, "
                     f"{len(distinct):,} distinct values")  # fmt: skip
    lines += [f"  warning: {w}" for w in report.warnings] or ["  no problems found"]
    return "\n".join(lines)


def _values(v) -> list:
    return [] if v in (None, "") else v if isinstance(v, list) else [v]


def export_recbole(cfg: DataConfig, folder: Path) -> list[Path]:
    """The filtered data set as RecBole atomic files (<name>.inter / .item / .user), so RecBole's own
    models train on exactly the interactions ThinkRec does."""
    schema = schema_for(cfg)
    ds, _ = load_from_schema(schema, cfg.max_users)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [it.item_id for it in ds.items]
    inter = pd.DataFrame(
        [(u.user_id, ids[i], r, t) for u in ds.users for i, r, t in zip(u.items, u.ratings, u.timestamps, strict=True)],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    paths = [folder / f"{schema.name}.inter", folder / f"{schema.name}.item"]
    write_atomic(inter, {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}, paths[0])
    items = pd.DataFrame({"item_id": ids, "title": [it.title.replace("\t", " ") for it in ds.items]})
    types = {"item_id": "token", "title": "token_seq"}
    for name, a in schema.items.attributes.items():
        items[name] = [" ".join(_values(it.attributes.get(name))) if a.kind == "list" else
                       ("" if it.attributes.get(name) is None else str(it.attributes.get(name)))
                       for it in ds.items]  # fmt: skip
        types[name] = {"list": "token_seq", "numeric": "float"}.get(a.kind, "token")
    write_atomic(items, types, paths[1])
    if any(u.profile for u in ds.users):
        cols = sorted({k for u in ds.users for k in u.profile})
        users = pd.DataFrame(
            [[u.user_id, *(u.profile.get(c, "") for c in cols)] for u in ds.users], columns=["user_id", *cols]
        )
        paths.append(folder / f"{schema.name}.user")
        write_atomic(users, {"user_id": "token"} | dict.fromkeys(cols, "token"), paths[2])
    return paths
