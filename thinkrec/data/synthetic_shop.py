"""A seeded synthetic shop, written as the files a user would bring (events.csv, products.csv and a
dataset config, docs/own_data.md), at any size: the catalogue and log are drawn with numpy in bulk,
so 10^6 items and 10^7 interactions take seconds to minutes, not hours.

Planted structure a recommender can find, and a test can check:
- popularity follows a power law (Zipf-like weights over a shuffled catalogue);
- every user has a favourite category and a favourite brand, and most of their events fall there;
- prices are log-normal around each category's level, and each user keeps to a price band;
- some items form series (parts 1..k of one title, one brand): a user who reads part p reads part
  p + 1 next more often than not;
- events come in sessions (short gaps inside a session, long ones between), as views, carts and
  purchases.

    python -m thinkrec.data.synthetic_shop --out data/shop --users 2000 --items 1000 --seed 0
    thinkrec data --check --dataset data/shop/shop.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = [
    ("Kitchen", ["Mug", "Pan", "Kettle", "Knife", "Bowl"]),
    ("Books", ["Novel", "Cookbook", "Atlas", "Memoir", "Guide"]),
    ("Garden", ["Hose", "Rake", "Planter", "Seed Kit", "Shears"]),
    ("Toys", ["Puzzle", "Robot", "Doll", "Kite", "Board Game"]),
    ("Office", ["Pen", "Notebook", "Stapler", "Desk Lamp", "Folder"]),
    ("Sports", ["Ball", "Racket", "Yoga Mat", "Bottle", "Helmet"]),
    ("Audio", ["Headphones", "Speaker", "Radio", "Microphone", "Cable"]),
    ("Beauty", ["Soap", "Lotion", "Brush", "Perfume", "Mirror"]),
]
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Bright", "Quiet", "Sturdy", "Light", "Bold", "Soft", "Smart"]
EVENTS = {"view": 1.0, "cart": 2.0, "purchase": 3.0}

CONFIG = """# A synthetic shop (thinkrec/data/synthetic_shop.py, seed {seed}): {users} users, {items} products.
name: shop
files: {{inter: events.csv, item: products.csv}}
noun: {{one: product, many: products}}
verb: {{past: bought, present: buy}}
interactions:
  user: customer
  item: sku
  time: {{field: ts, format: iso8601}}
  feedback: {{kind: events, field: event, events: {{view: 1, cart: 2, purchase: 3}}}}
filter: {{user_min: 5, item_min: 1, dedup: none, on_missing_item: error}}
items:
  id: sku
  title: title
  text: "{{title}}. Category: {{category}}. Brand: {{brand}}. Price: ${{price}}."
  attributes:
    category: {{field: category, kind: categorical, word: category, primary: true}}
    brand: {{field: brand, kind: categorical, word: brand}}
    price: {{field: price, kind: numeric, word: price, unit: "$"}}
    series: {{field: series, kind: categorical, word: series, requestable: false}}
rules:
  flagged: {{attribute: brand, value: "Brand 0"}}
"""


def make_catalogue(n_items: int, rng: np.random.Generator) -> pd.DataFrame:
    n_cat = len(CATEGORIES)
    n_brands = max(4, min(5000, n_items // 20))
    category = rng.integers(0, n_cat, n_items)
    brand = rng.integers(0, n_brands, n_items)
    noun = rng.integers(0, 5, n_items)
    adjective = rng.integers(0, len(ADJECTIVES), n_items)
    level = np.exp(rng.normal(3.0, 0.6, n_cat))  # each category's price level
    price = np.round(level[category] * np.exp(rng.normal(0, 0.4, n_items)), 2)
    # series: runs of 3-6 consecutive items share a category, a brand and a title
    series = np.full(n_items, -1)
    part = np.zeros(n_items, dtype=int)
    start, sid = 0, 0
    while start < n_items:
        if rng.random() < 0.15:
            length = min(int(rng.integers(3, 7)), n_items - start)
            series[start : start + length] = sid
            part[start : start + length] = np.arange(1, length + 1)
            category[start : start + length] = category[start]
            brand[start : start + length] = brand[start]
            noun[start : start + length], adjective[start : start + length] = noun[start], adjective[start]
            sid, start = sid + 1, start + length
        else:
            start += int(rng.integers(1, 8))
    names = np.array([f"{a} {CATEGORIES[c][1][n]}" for c in range(n_cat) for n in range(5) for a in ADJECTIVES])
    base = names[(category * 5 + noun) * len(ADJECTIVES) + adjective]
    sku = np.char.add("P", np.char.zfill(np.arange(n_items).astype(str), len(str(n_items))))
    title = np.where(series >= 0, np.char.add(np.char.add(base, ", part "), part.astype(str)), base)
    title = np.char.add(np.char.add(title, " #"), np.arange(n_items).astype(str))  # titles stay distinct
    return pd.DataFrame(
        {
            "sku": sku,
            "title": title,
            "category": np.array([c for c, _ in CATEGORIES])[category],
            "brand": np.char.add("Brand ", brand.astype(str)),
            "price": price,
            "series": np.where(series >= 0, np.char.add("S", series.astype(str)), ""),
            "part": part,
        }
    )


def make_events(items: pd.DataFrame, n_users: int, n_events: int, rng: np.random.Generator) -> pd.DataFrame:
    n_items = len(items)
    cats = pd.Categorical(items["category"], categories=[c for c, _ in CATEGORIES]).codes.astype(int)
    brands = pd.Categorical(items["brand"]).codes.astype(int)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    # every user's events: at least 5, the rest log-normal around the mean
    extra = rng.lognormal(0, 1.0, n_users)
    counts = 5 + np.floor(extra / extra.sum() * max(0, n_events - 5 * n_users)).astype(int)
    user = np.repeat(np.arange(n_users), counts)
    n = len(user)
    fav_cat = rng.integers(0, len(CATEGORIES), n_users)[user]
    fav_brand = rng.integers(0, brands.max() + 1, n_users)[user]
    # a pick: 55% favourite category, 20% favourite brand (if it sells anything), 25% anywhere,
    # each weighted by popularity
    source = rng.choice(3, n, p=[0.55, 0.2, 0.25])
    pick = np.empty(n, dtype=np.int64)
    pick[source == 2] = _draw(np.arange(n_items), popularity, (source == 2).sum(), rng)
    groups = ((cats, len(CATEGORIES), fav_cat, source == 0), (brands, brands.max() + 1, fav_brand, source == 1))
    for group, n_groups, key, mask in groups:
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
        picked = np.flatnonzero(mask)
        picked = picked[np.argsort(key[picked], kind="stable")]  # the rows of each group, together
        keys, starts = np.unique(key[picked], return_index=True)
        for g, rows in zip(keys, np.split(picked, starts[1:]), strict=True):
            members = order[bounds[g] : bounds[g + 1]]
            pick[rows] = _draw(members, popularity[members], len(rows), rng) if len(members) else \
                _draw(np.arange(n_items), popularity, len(rows), rng)  # fmt: skip
    # series read in order: after part p of a series, part p + 1 comes next (70%)
    series = items["series"].to_numpy()
    part = items["part"].to_numpy()
    nxt = np.full(n_items, -1)
    same = (series[1:] == series[:-1]) & (series[1:] != "") & (part[1:] == part[:-1] + 1)
    nxt[:-1][same] = np.arange(1, n_items)[same]
    for _ in range(5):  # a series can run on for several steps
        follow = np.zeros(n, dtype=bool)
        follow[1:] = (user[1:] == user[:-1]) & (nxt[pick[:-1]] >= 0) & (rng.random(n - 1) < 0.7)
        follow[1:] &= pick[1:] != nxt[pick[:-1]]
        pick[1:][follow[1:]] = nxt[pick[:-1]][follow[1:]]
    # sessions: minutes apart inside one, days apart between
    in_session = rng.random(n) < 0.8
    gaps = np.where(in_session, rng.exponential(300, n), rng.exponential(3 * 86400, n)).astype(np.int64) + 1
    first = np.r_[True, user[1:] != user[:-1]]
    start = 1_600_000_000 + rng.integers(0, 200 * 86400, n_users)
    gaps[first] = 0
    ts = np.cumsum(gaps)
    ts = ts - np.repeat(ts[first], counts) + np.repeat(start, counts)
    event = rng.choice(list(EVENTS), n, p=[0.85, 0.1, 0.05])
    width = len(str(n_users))
    return pd.DataFrame(
        {
            "customer": np.char.add("C", np.char.zfill(user.astype(str), width)),
            "sku": items["sku"].to_numpy()[pick],
            "ts": pd.to_datetime(ts, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event": event,
        }
    )


def _draw(members: np.ndarray, weights: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    cdf = np.cumsum(weights)
    return members[np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right").clip(0, len(members) - 1)]


def write_shop(folder: str | Path, users: int = 2000, items: int = 1000, events: int = 0, seed: int = 0) -> Path:
    """The shop's files and config in `folder`; returns the config's path. `events` 0 = 20 a user."""
    if users < 1 or items < 10:
        raise ValueError("a shop needs at least 1 user and 10 items")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    catalogue = make_catalogue(items, rng)
    log = make_events(catalogue, users, events or 20 * users, rng)
    catalogue.drop(columns="part").to_csv(folder / "products.csv", index=False)
    log.to_csv(folder / "events.csv", index=False)
    config = folder / "shop.yaml"
    config.write_text(CONFIG.format(seed=seed, users=users, items=items))
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for events.csv, products.csv and shop.yaml")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--events", type=int, default=0, help="interactions in all; 0 = 20 a user")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_shop(args.out, args.users, args.items, args.events, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
