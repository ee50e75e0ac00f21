import json

import pytest

from thinkrec.config import DataConfig
from thinkrec.data import load_dataset, load_prepared, prepare
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir


def test_movielens_is_real_and_k_core(ml100k):
    s = ml100k.stats()
    assert s["users"] == 943 and 1300 < s["items"] <= 1682
    assert 99_000 < s["interactions"] <= 100_000
    item_counts = {}
    for u in ml100k.users:
        assert len(u.items) >= 5
        assert u.timestamps == sorted(u.timestamps)
        for i in u.items:
            item_counts[i] = item_counts.get(i, 0) + 1
    assert min(item_counts.values()) >= 5
    toy = ml100k.item_by_id("1")
    assert toy.title == "Toy Story" and toy.year == "1995" and "Animation" in toy.genres


def test_leave_last_out_split(ml100k):
    u = ml100k.users[0]
    assert u.target_for("test") == u.items[-1]
    assert u.target_for("valid") == u.items[-2]
    assert u.history_for("test") == u.items[:-1]
    assert u.history_for("valid") == u.items[:-2]
    assert u.train_items() == u.items[:-2]
    assert u.target_for("test") not in u.train_items() or u.items.count(u.target_for("test")) > 1


def test_max_users_and_roundtrip(tmp_path):
    run = RunDir(tmp_path / "run")
    ds = prepare(DataConfig(max_users=50), run)
    assert len(ds.users) <= 50
    again = load_prepared(run)
    assert [u.items for u in again.users] == [u.items for u in ds.users]
    assert again.items[3].title == ds.items[3].title


def test_bad_inputs_give_clear_errors(tmp_path, ml100k):
    with pytest.raises(ThinkRecError, match="is missing"):
        load_dataset(DataConfig(data_dir=str(tmp_path)))
    with pytest.raises(ThinkRecError, match="not supported"):
        load_dataset(DataConfig(dataset="netflix"))
    with pytest.raises(ThinkRecError, match="unknown item id"):
        ml100k.item_by_id("999999")
    with pytest.raises(ThinkRecError, match="unknown user id"):
        ml100k.user_by_id("nobody")
    with pytest.raises(ThinkRecError, match="no interactions left"):
        load_dataset(DataConfig(max_users=3, min_core=50))


def test_corrupt_or_missing_run_directory(tmp_path):
    with pytest.raises(ThinkRecError, match="does not exist"):
        load_prepared(RunDir(tmp_path / "nope"))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "manifest.json").write_text("{not json")
    with pytest.raises(ThinkRecError, match="corrupt"):
        load_prepared(run)
    (run.path / "manifest.json").write_text(
        json.dumps({"stages": {"data": {"config": {}, "outputs": {"items": "data/items.jsonl"}}}})
    )
    with pytest.raises(ThinkRecError, match="incomplete"):
        load_prepared(run)
