"""Data sets as a YAML config over the user's files (thinkrec/data/schema.py, loader.py): MovieLens-100K
through its shipped config gives exactly the split it always had, the same data re-expressed (other
column names, string ids, ISO times, no ratings, another separator, extra unused items) gives the same
split, RecBole atomic files round-trip, and every bad file or key is an error naming where it is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from thinkrec.config import DataConfig
from thinkrec.data import load_prepared, prepare
from thinkrec.data.schema import load_schema, resolve_root
from thinkrec.data.stage import check, export_recbole, load_dataset, load_run_schema
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir

# sha256 of [item count, every user's item indices oldest first] (split_digest) and of [item ids in
# index order, user ids in order]: the MovieLens-100K split every published figure was measured on
ML100K_SPLIT_DIGEST = "9475ae2257caa53db9515a91a4d55b3fb0e03a67c9ffbc802cc43253514a3b6b"
ML100K_ID_DIGEST = "de2ff0b9fc71cfe75ba16c80dbfe149ae2cde886dbe0ae5e80247ec9fc6bc58f"
# ... and of [item texts, ratings, timestamps, user profiles]: the prompts' and embeddings' inputs
ML100K_CONTENT_DIGEST = "527f1f2f14f25417c4b3ca85dda2db8fd747e37f2e00634aff66d0a88549ba0a"


def split_digest(ds) -> str:
    return hashlib.sha256(json.dumps([len(ds.items), [u.items for u in ds.users]]).encode()).hexdigest()


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def test_the_shipped_ml100k_config_gives_the_golden_split(ml100k):
    assert split_digest(ml100k) == ML100K_SPLIT_DIGEST
    assert _sha([[it.item_id for it in ml100k.items], [u.user_id for u in ml100k.users]]) == ML100K_ID_DIGEST
    content = [
        [it.text() for it in ml100k.items],
        [u.ratings for u in ml100k.users],
        [u.timestamps for u in ml100k.users],
        [u.profile for u in ml100k.users],
    ]
    assert _sha(content) == ML100K_CONTENT_DIGEST


ML_DIR = resolve_root("pkg:recbole/dataset_example/ml-100k", "")


def _reexpress(folder: Path) -> Path:
    """MovieLens-100K as another shop would write it: CSV with other names, string ids, ISO times, no
    ratings, semicolons, JSONL items with extra items nobody watched."""
    inter = pd.read_csv(ML_DIR / "ml-100k.inter", sep="\t", dtype=str)
    inter.columns = ["uid", "mid", "stars", "when"]
    out = pd.DataFrame(
        {
            "customer": "c" + inter["uid"],
            "when": pd.to_datetime(inter["when"].astype(int), unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sku": "m" + inter["mid"],
        }
    )
    out.to_csv(folder / "events.csv", sep=";", index=False)
    items = pd.read_csv(ML_DIR / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    items.columns = ["mid", "name", "released", "tags"]
    items["sku"] = "m" + items["mid"]
    extra = pd.DataFrame({"sku": ["m90001", "m90002"], "name": ["Nobody Saw It", "Nor This"], "released": "2001",
                          "tags": "Drama"})  # fmt: skip
    pd.concat([items[["sku", "name", "released", "tags"]], extra]).to_json(
        folder / "films.jsonl", orient="records", lines=True
    )
    config = folder / "films.yaml"
    config.write_text(
        """
name: films
files: {inter: events.csv, item: films.jsonl, sep: ";"}
noun: {one: film, many: films}
verb: {past: saw, present: see}
interactions: {user: customer, item: sku, time: {field: when, format: iso8601}, feedback: implicit}
filter: {user_min: 5, item_min: 5, on_missing_item: error}
items:
  id: sku
  title: name
  attributes:
    tags: {field: tags, kind: list, sep: " ", word: genre, primary: true}
    released: {field: released, kind: numeric, time: true, na: [unkonwn, V]}
"""
    )
    return config


def test_ml100k_re_expressed_gives_the_identical_split(tmp_path, ml100k):
    ds = load_dataset(DataConfig(dataset=str(_reexpress(tmp_path))))
    assert split_digest(ds) == ML100K_SPLIT_DIGEST
    assert [it.item_id for it in ds.items] == ["m" + it.item_id for it in ml100k.items]
    assert [it.text() for it in ds.items] == [it.text() for it in ml100k.items]
    assert all(r == 1.0 for u in ds.users for r in u.ratings)  # implicit: no ratings
    assert [u.timestamps for u in ds.users] == [u.timestamps for u in ml100k.users]


def test_recbole_export_reads_back_to_the_same_split(tmp_path, ml100k):
    paths = export_recbole(DataConfig(), tmp_path / "atomic")
    assert [p.name for p in paths] == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert paths[0].read_text().splitlines()[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    config = tmp_path / "again.yaml"
    schema = load_schema("ml-100k")
    raw = Path(schema.source).read_text().replace("root: pkg:recbole/dataset_example/ml-100k", "root: atomic")
    raw = raw.replace("movie_title", "title").replace("field: class", "field: genres")
    raw = raw.replace("field: release_year", "field: year")
    config.write_text(raw)
    again = load_dataset(DataConfig(dataset=str(config)))
    assert split_digest(again) == ML100K_SPLIT_DIGEST
    assert [u.ratings for u in again.users] == [u.ratings for u in ml100k.users]


def test_prepare_writes_the_resolved_schema_and_check_prints_the_statistics(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    prepare(DataConfig(max_users=40), run)
    schema = load_run_schema(run)
    assert schema["noun"] == {"one": "movie", "many": "movies"} and schema["filter"]["user_min"] == 5
    assert load_prepared(run).items[0].attributes["genres"]
    text = check(DataConfig())
    assert "users              943" in text and "interactions       99,287" in text and "attribute genres" in text
    assert main(["data", "--check", "--dataset", "ml-100k"]) == 0
    assert "history length" in capsys.readouterr().out


def _shop(folder: Path, inter: str, items: str, extra: str = "") -> str:
    (folder / "clicks.csv").write_text(inter)
    (folder / "items.csv").write_text(items)
    (folder / "shop.yaml").write_text(
        "name: shop\nfiles: {inter: clicks.csv, item: items.csv}\n"
        "interactions: {user: user, item: sku, time: ts}\n"
        "filter: {user_min: 3, item_min: 1}\n"
        "items: {id: sku, title: title, attributes: {price: {field: price, kind: numeric}}}\n" + extra
    )
    return str(folder / "shop.yaml")


GOOD = "user,sku,ts\nu1,A1,1\nu1,B2,2\nu1,C3,3\n"


ITEMS = "sku,title,price\nA1,Mug,3.5\nB2,Pen,1\nC3,Cup,2\n"
BAD = [  # (interactions, items, config lines added, the error's words)
    ("customer,sku,ts\nu1,A1,1\n", ITEMS, "", r"clicks.csv: no column 'user' \(the config's interactions.user\)"),
    ("user,sku,ts\nu1,A1,1\nu1,B2,yesterday\n", ITEMS, "", r"clicks.csv line 3: time column 'ts' has 'yesterday'"),
    (GOOD, ITEMS.replace("B2", "A1"), "", r"items.csv lines 2, 3: item id 'A1' appears more than once"),
    (GOOD, ITEMS.replace("3.5", "cheap"), "", r"items.csv line 2: attribute 'price' \(column 'price'\) has 'cheap'"),
    (
        GOOD + "u1,Z9,4\n",
        ITEMS,
        "",
        r"1 interactions name items that .*items.csv does not have \(first: 'Z9' at .*line 5",
    ),
    ("user,sku,ts\nu1,A1,1\nu1,B2,2\n", ITEMS, "", "no interactions left after the k-core filter"),
    (GOOD, ITEMS, "colour: red\n", "unknown key 'colour'"),
    (GOOD, ITEMS, "rules: {flagged: {attribute: brand, value: X}}\n", "rules.flagged.attribute 'brand' is not in"),
    (GOOD, ITEMS, "noun: {one: 3, many: [x]}\n", "noun.many must be a string"),
]


@pytest.mark.parametrize(("inter", "items", "extra", "message"), BAD)
def test_every_bad_file_or_key_is_named(tmp_path, inter, items, extra, message):
    config = _shop(tmp_path, inter, items, extra)
    run = RunDir(tmp_path / "run")
    with pytest.raises(ThinkRecError, match=message):
        prepare(DataConfig(dataset=config), run)
    assert not (run.path / "data").exists()  # nothing half-written


def test_undecodable_bytes_are_named_and_unknown_items_can_be_dropped(tmp_path):
    config = _shop(tmp_path, GOOD + "u1,Z9,4\n", ITEMS)
    text = Path(config).read_text().replace("item_min: 1}", "item_min: 1, on_missing_item: drop}")
    Path(config).write_text(text)
    ds = load_dataset(DataConfig(dataset=config))
    assert [it.item_id for it in ds.items] == ["A1", "B2", "C3"] and ds.users[0].items == [0, 1, 2]
    assert ds.items[0].text() == "Mug." and ds.items[0].attributes["price"] == 3.5
    (tmp_path / "clicks.csv").write_bytes(GOOD.encode() + b"u1,\xff\xfe,5\n")
    with pytest.raises(ThinkRecError, match=r"clicks.csv line 5: bytes that are not utf-8"):
        load_dataset(DataConfig(dataset=config))
    with pytest.raises(ThinkRecError, match="does not exist"):
        load_dataset(DataConfig(dataset=str(tmp_path / "nope.yaml")))


def test_the_synthetic_shop_is_seeded_and_has_its_planted_structure(tmp_path):
    from thinkrec.data.synthetic_shop import write_shop

    config = write_shop(tmp_path / "a", users=300, items=200, seed=3)
    again = write_shop(tmp_path / "b", users=300, items=200, seed=3)
    assert (tmp_path / "a" / "events.csv").read_bytes() == (tmp_path / "b" / "events.csv").read_bytes()
    assert config.read_text() == again.read_text()
    ds = load_dataset(DataConfig(dataset=str(config)))
    assert len(ds.users) == 300 and {r for u in ds.users for r in u.ratings} == {1.0, 2.0, 3.0}
    counts = pd.Series([i for u in ds.users for i in u.items]).value_counts()
    assert counts.iloc[: len(ds.items) // 10].sum() > 0.3 * counts.sum()  # a power law, not uniform
    # most of a user's events fall in one category
    modal = [pd.Series([ds.items[i].attributes["category"] for i in u.items]).value_counts().iloc[0] / len(u.items)
             for u in ds.users]  # fmt: skip
    assert sum(modal) / len(modal) > 0.5
    # after part p of a series, part p + 1 comes next more often than not
    part = {it.idx: (it.attributes["series"], int(it.title.split("part ")[1].split()[0]))
            for it in ds.items if it.attributes["series"]}  # fmt: skip
    last = {s: max(p for s2, p in part.values() if s2 == s) for s, _ in part.values()}
    pairs = [(a, b) for u in ds.users for a, b in zip(u.items, u.items[1:], strict=False)
             if a in part and part[a][1] < last[part[a][0]]]  # fmt: skip
    follows = sum(part.get(b) == (part[a][0], part[a][1] + 1) for a, b in pairs)
    assert pairs and follows > 0.5 * len(pairs)
    assert ds.items[0].text().endswith(f"Price: ${ds.items[0].attributes['price']:g}.")


def test_jsonl_numbers_blank_lines_repeats_and_unknown_items_read_as_written(tmp_path):
    from thinkrec.data.synthetic_shop import write_shop

    (tmp_path / "log.csv").write_text("user,sku,ts\nu1,7,30\n\nu1,8,20\nu1,9,10\nu1,7,5\nu1,5,40\n")
    (tmp_path / "items.jsonl").write_text(
        '{"sku": 7, "title": "Seven", "year": 1990.0, "tags": ["a", "b"]}\n'
        '{"sku": 8, "title": null, "year": null, "tags": []}\n'
        '{"sku": 9, "title": "Nine", "year": 2001, "tags": ["c"]}\n'
    )
    config = tmp_path / "c.yaml"
    body = (
        "name: t\nfiles: {inter: log.csv, item: items.jsonl}\ninteractions: {user: user, item: sku, time: ts}\n"
        "filter: {user_min: 3, item_min: 1, dedup: first, on_missing_item: keep}\n"
        "items: {id: sku, title: title, text: '{title}: {tags}', attributes: {tags: {field: tags, kind: list},"
        " year: {field: year, kind: numeric, time: true}}}\n"
    )
    config.write_text(body)
    ds = load_dataset(DataConfig(dataset=str(config)))
    by_id = {it.item_id: it for it in ds.items}
    assert by_id["7"].year == "1990" and by_id["7"].attributes["tags"] == ["a", "b"]
    assert by_id["8"].title == "8" and by_id["8"].attributes["year"] is None  # null: not known, not "nan"
    assert by_id["5"].title == "item 5" and by_id["5"].text() == "item 5: "  # kept unknown item, empty attributes
    # dedup keeps the earliest 7 (ts 5), so the order is 7, 9, 8, 5
    assert [ds.items[i].item_id for i in ds.users[0].items] == ["7", "9", "8", "5"]
    (tmp_path / "log.csv").write_text("user,sku,ts\nu1,7,1\n\nu1,8,x\n")
    with pytest.raises(ThinkRecError, match=r"log.csv line 4: time column"):  # the blank line counts
        load_dataset(DataConfig(dataset=str(config)))
    with pytest.raises(ThinkRecError, match="filter.user_min must be >= 3"):
        load_dataset(DataConfig(dataset="ml-100k", min_core=2))
    config.write_text(body.replace("item: items.jsonl}", "item: items.jsonl, user: u.csv}"))
    with pytest.raises(ThinkRecError, match="files.user and users: go together"):
        load_dataset(DataConfig(dataset=str(config)))
    for seed in range(6):  # small catalogues: some categories have no items
        write_shop(tmp_path / f"s{seed}", users=20, items=10, seed=seed)


def test_prompts_use_the_configs_noun_and_verb(tmp_path):
    from sft_data.prompts import SYSTEM, behaviour_prompt, system_prompt
    from thinkrec.data.synthetic_shop import write_shop
    from tokenizer_ext.sid import SIDIndex

    run = RunDir(tmp_path / "run")
    prepare(DataConfig(dataset=str(write_shop(tmp_path / "shop", users=40, items=30, seed=1))), run)
    ds = load_prepared(run)
    assert ds.name == "shop" and ds.noun == ("product", "products") and ds.verb == ("bought", "buy")
    index = SIDIndex([(i // 16, i % 16, 0) for i in range(len(ds.items))], 3, 16)
    system, user = behaviour_prompt(ds, index, ds.users[0].items[:3])
    assert system["content"] == system_prompt(ds) == SYSTEM.replace("movie", "product")
    assert user["content"].startswith("Bought, oldest first:\n") and user["content"].endswith("the next product.")


def test_builders_skip_what_a_shop_catalogue_cannot_ask_instead_of_raising(tmp_path):
    from collections import Counter

    from sft_data.qa import item_questions, rationale, user_questions
    from sft_data.requests import request_samples
    from thinkrec.data.synthetic_shop import write_shop

    ds = load_dataset(DataConfig(dataset=str(write_shop(tmp_path, users=200, items=120, seed=1))))

    class Index:  # SIDs are not what these builders test
        def sid(self, i: int) -> str:
            return f"<|sid_begin|><s_a_{i}><|sid_end|>"

    # no release years: no decade question, the other item tasks take its turns
    items = item_questions(ds, Index(), 30, False, 0)
    assert set(Counter(q.task for q in items)) == {"item_title", "item_genre"}
    assert any("Which category is" in q.messages[1]["content"] for q in items)  # the config's words
    users = user_questions(ds, Index(), 30, 10, False, 0)
    assert Counter(q.task for q in users) == {"user_top_genre": 10, "user_watched": 10, "user_rating": 10}
    rated = [q for q in users if q.task == "user_rating"]
    assert all(
        "bought" in q.messages[1]["content"] and "Did they purchase it?" in q.messages[1]["content"] for q in rated
    )
    shown = ds.users[0].train_items()[-10:]
    assert rationale(ds, shown, shown[-1]).startswith("Recent products lean to ")
    assert request_samples(ds, Index(), 20, 10, 0) == []  # no genre words, no years: no request kind applies
