import numpy as np
import pytest

from thinkrec.errors import ThinkRecError
from tokenizer_ext.align import align_embeddings, collaborative_embeddings, sequential_embeddings
from tokenizer_ext.rq_kmeans import auto_codebook_size, codebook_report, fit_rq_kmeans, reconstruct
from tokenizer_ext.sid import SIDIndex, find_sids, parse_sid, sid_string


def _clustered(n=400, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    return (centres[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_rq_kmeans_codes_are_unique_deterministic_and_reduce_error():
    x = _clustered()
    a = fit_rq_kmeans(x, levels=3, k=8, seed=1)
    b = fit_rq_kmeans(x, levels=3, k=8, seed=1)
    assert np.array_equal(a.codes, b.codes)
    assert len({tuple(c) for c in a.codes}) == len(x)
    assert a.codes.min() >= 0 and a.codes.max() < 8
    # each level of residual quantisation explains more of the signal
    errs = [((x - reconstruct(a.codes[:, : lv + 1], a.codebooks[: lv + 1])) ** 2).sum(1).mean() for lv in range(3)]
    assert errs[0] > errs[1] > errs[2]


def test_balanced_levels_use_codes_evenly():
    x = _clustered()
    rep = codebook_report(x, fit_rq_kmeans(x, 3, 8, balanced=True))
    plain = codebook_report(x, fit_rq_kmeans(x, 3, 8, balanced=False))
    for lv in rep["per_level"]:
        assert lv["utilisation"] == 1.0
        assert lv["entropy"] > 0.97 * rep["max_entropy"]
    assert rep["collisions_resolved"] <= plain["collisions_resolved"]


def test_a_large_catalogue_is_fitted_on_a_sample_and_keeps_unique_codes_of_the_same_quality():
    x = _clustered(n=3000)
    full = fit_rq_kmeans(x, 3, 16, iters=20, seed=2)
    sampled = fit_rq_kmeans(x, 3, 16, iters=20, seed=2, fit_sample=1000)  # codebooks from a third of the items
    assert np.array_equal(sampled.codes, fit_rq_kmeans(x, 3, 16, iters=20, seed=2, fit_sample=1000).codes)
    assert len({tuple(c) for c in sampled.codes}) == len(x) and sampled.codes.max() < 16
    a, b = codebook_report(x, full), codebook_report(x, sampled)
    assert b["relative_reconstruction_loss"] < 1.1 * a["relative_reconstruction_loss"]
    for exact, sampled_level in zip(a["per_level"], b["per_level"], strict=True):
        assert sampled_level["utilisation"] == 1.0 and sampled_level["entropy"] > exact["entropy"] - 0.1
    # a prefix that fills up sends its extra items one level wider, still to unique codes
    crowded = np.repeat(_clustered(n=40), 30, axis=0) + 1e-4 * np.random.default_rng(0).normal(size=(1200, 32))
    packed = fit_rq_kmeans(crowded.astype(np.float32), 3, 16, iters=10, fit_sample=640)
    assert len({tuple(c) for c in packed.codes}) == 1200


def test_codebook_too_small_is_refused():
    with pytest.raises(ThinkRecError, match="gives 8 codes"):
        fit_rq_kmeans(_clustered(n=100), levels=3, k=2)
    assert auto_codebook_size(1349, 3) == 32
    assert auto_codebook_size(10, 3) == 8


def test_collaborative_embeddings_bring_co_watched_items_together():
    seqs = [[0, 1, 0, 1, 0, 1], [2, 3, 2, 3, 2, 3], [0, 1, 2, 3]] * 5
    v = collaborative_embeddings(6, seqs, dim=4)
    assert v[0] @ v[1] > v[0] @ v[2]
    aligned = align_embeddings(np.eye(6, 8, dtype=np.float32), seqs, dim=4)
    assert aligned.shape == (6, 12)
    with pytest.raises(ThinkRecError, match="collab_source"):
        align_embeddings(np.eye(6, 8, dtype=np.float32), seqs, dim=4, source="word2vec")


def test_sasrec_item_embeddings_group_items_that_follow_each_other(tmp_path):
    # two worlds of items, each watched in its own orders: a SASRec's table must tell them apart
    seqs = [[0, 1, 2, 3] * 4, [4, 5, 6, 7] * 4, [0, 2, 1, 3] * 3, [5, 4, 7, 6] * 3] * 10
    v = sequential_embeddings(8, seqs, dim=8, epochs=20, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("sasrec_item_emb_*.npy")
    assert np.array_equal(np.load(entry), v)
    np.save(entry, np.zeros_like(v))  # marked: a second call must read the entry, not train again
    assert not sequential_embeddings(8, seqs, dim=8, epochs=20, cache_dir=tmp_path).any()
    other = sequential_embeddings(8, seqs[:-1], dim=8, epochs=20, cache_dir=tmp_path)
    assert other.shape == v.shape and len(list(tmp_path.glob("*.npy"))) == 2  # other data, other entry
    sim = v @ v.T
    same = np.mean([sim[i, j] for g in ([0, 1, 2, 3], [4, 5, 6, 7]) for i in g for j in g if i != j])
    across = np.mean([sim[i, j] for i in range(4) for j in range(4, 8)])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert same > across + 0.5, (same, across)
    aligned = align_embeddings(np.eye(8, 8, dtype=np.float32), seqs, weight=2.0, dim=8, source="sasrec", epochs=2)
    assert aligned.shape == (8, 16) and np.allclose(np.linalg.norm(aligned[:, 8:], axis=1), 2.0, atol=1e-5)


def test_sid_strings_and_trie():
    index = SIDIndex([(0, 1, 2), (0, 1, 3), (1, 0, 0)], levels=3, codebook_size=4)
    s = sid_string((0, 1, 3))
    assert s == "<|sid_begin|><s_a_0><s_b_1><s_c_3><|sid_end|>"
    assert index.item(s) == 1 and index.sid(2) == sid_string((1, 0, 0))
    assert index.next_codes(()) == {0, 1}
    assert index.next_codes((0, 1)) == {2, 3}
    assert index.next_codes((1, 1)) == set()
    assert find_sids(f"try {s} or {index.sid(0)}.") == [s, index.sid(0)]
    with pytest.raises(ThinkRecError, match="not in the catalogue"):
        index.item(sid_string((3, 3, 3)))
    with pytest.raises(ThinkRecError, match="not a semantic ID"):
        parse_sid("<s_a_1><s_b_2>")
    with pytest.raises(ThinkRecError, match="level 2"):
        parse_sid("<|sid_begin|><s_a_1><s_a_2><s_c_0><|sid_end|>")
    with pytest.raises(ThinkRecError, match="unknown item index"):
        index.sid(7)
    with pytest.raises(ThinkRecError, match="duplicate"):
        SIDIndex([(0, 0, 0), (0, 0, 0)], 3, 4)


def test_new_items_join_the_catalogue_without_retraining(tokenized_run, tmp_path):
    import json
    import shutil

    from thinkrec.config import AddItemsConfig
    from thinkrec.data import load_prepared
    from thinkrec.errors import ThinkRecError
    from thinkrec.rundir import RunDir
    from tokenizer_ext.add_items import run_add_items
    from tokenizer_ext.sid import MODEL_SID_FILE
    from tokenizer_ext.stage import load_index

    src, _ = tokenized_run
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for part in ("manifest.json", "data", "tokenizer"):
        (shutil.copytree if (src.path / part).is_dir() else shutil.copy)(src.path / part, run.path / part)
    (run.path / "model_base").mkdir()  # the model's SID file is what add-items touches there
    for name in ("config.json", MODEL_SID_FILE):
        shutil.copy(src.path / "model_base" / name, run.path / "model_base" / name)
    before = load_prepared(run)
    star_wars = next(it for it in before.items if it.title == "Star Wars")
    new = tmp_path / "new.item"  # RecBole's atomic format, as the catalogue's own item file
    new.write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "9001\tToy Story 3\t2010\tAnimation Children's Comedy\n"
        f"9002\t{star_wars.title}\t{star_wars.year}\t{' '.join(star_wars.genres)}\n"
    )
    report = run_add_items(AddItemsConfig(items_file=str(new)), run)
    ds, index = load_prepared(run), load_index(run)
    assert report["added"] == 2 and len(ds.items) == len(index.codes) == len(before.items) + 2
    assert [it.item_id for it in ds.items[-2:]] == ["9001", "9002"] and ds.items[-1].genres == star_wars.genres
    assert len(set(index.codes)) == len(index.codes)  # every SID still names one item
    assert index.codes[: len(before.items)] == load_index(src).codes  # nothing already there moved
    # a new item lands in a first-level group of the catalogue items most like it in content
    x = np.load(run.path / "tokenizer" / "item_embeddings.npy")
    content = x.shape[1] - run.manifest()["stages"]["tokenize"]["config"]["tokenizer"]["collab_dim"]
    for new_idx in (len(ds.items) - 2, len(ds.items) - 1):
        alike = np.argsort(-(x[: len(before.items), :content] @ x[new_idx, :content]))[:10]
        assert index.codes[new_idx][0] in {index.codes[j][0] for j in alike}
    assert json.loads((run.path / "model_base" / MODEL_SID_FILE).read_text())["codes"][-1] == list(index.codes[-1])
    with pytest.raises(ThinkRecError, match="in the catalogue already"):
        run_add_items(AddItemsConfig(items_file=str(new)), run)
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title\n9003,Nope\n")
    with pytest.raises(ThinkRecError, match="no column 'movie_title'"):
        run_add_items(AddItemsConfig(items_file=str(bad)), run)
    assert len(load_prepared(run).items) == len(ds.items)  # a refused file changes nothing
