"""Request-following data (sft_data/requests.py): every answer satisfies its request and is a real
train item or an unseen catalogue item, never a valid or test item; held-out phrasings and users
stay out of training; the reply names what was asked and reads back to the same constraint."""

from __future__ import annotations

import random

import pytest

from sft_data.prompts import chat_messages
from sft_data.qa import is_heldout_user
from sft_data.requests import (
    FOLLOW_UPS,
    GENRE_WORDS,
    KINDS,
    PHRASINGS,
    Preference,
    counterfactual,
    derive,
    follow_up,
    parse_reply,
    phrase,
    phrasings,
    reply,
    request_sample,
    typo,
    unsatisfying,
    why,
)
from tokenizer_ext.sid import find_sids


def test_every_kind_has_many_phrasings_and_some_are_held_out():
    for kind in (*KINDS, *FOLLOW_UPS):
        train, held = phrasings(kind, False), phrasings(kind, True)
        assert len(train) >= 6 and len(held) >= 2, kind
        assert not set(train) & set(held) and len(train) + len(held) == len(PHRASINGS[kind])
    rng = random.Random(0)
    slips = {typo("Something lighter tonight, please.", rng) for _ in range(50)}
    assert len(slips) > 5 and all(s != "Something lighter tonight, please." for s in slips)


def test_requests_samples_answer_with_items_that_satisfy_them_and_never_leak(data):
    ds, index = data
    rng = random.Random(0)
    pref = Preference.build(ds)
    kinds_seen, n = set(), 0
    for _ in range(400):
        u = rng.choice([p for p in range(len(ds.users)) if not is_heldout_user(p)])
        train = ds.users[u].train_items()
        t = rng.randrange(max(1, len(train) - 20), len(train))
        row = request_sample(ds, index, pref, u, t, 10, rng)
        if row is None:
            continue
        n += 1
        msgs = row["messages"]
        answers = [m for m in msgs if m["role"] == "assistant"]
        assert len(answers) == (2 if row["task"] == "request_multiturn" else 1)
        items = [index.item(find_sids(a["content"])[-1]) for a in answers]
        user = ds.users[u]
        assert not set(items) & {user.target_for("valid"), user.target_for("test")}
        assert not set(items) & set(train[:t]), "an answer is never an item of the history shown"
        assert len(set(items)) == len(items), "a follow-up never repeats the first answer"
        text = answers[0]["content"]
        heard = parse_reply(ds, text)
        assert heard is not None and heard.satisfied(ds.items[items[0]]), text
        kinds_seen.add(heard.kind)
    assert n > 250 and len(kinds_seen) >= 7, (n, kinds_seen)


def test_held_out_phrasings_never_appear_in_training_requests(data):
    ds, index = data
    from sft_data.requests import request_samples

    rows = request_samples(ds, index, 300, 10, seed=1)
    texts = [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]
    for kind in KINDS:
        for template in phrasings(kind, True):
            fixed = max(template.replace("{", "}").split("}")[::2], key=len).strip(" .,?")
            if len(fixed) >= 12:
                assert not any(fixed.lower() in t.lower() for t in texts), (kind, fixed)


def test_reply_names_the_request_and_reads_back_to_the_same_items(data):
    ds, _ = data
    rng = random.Random(3)
    everything = range(len(ds.items))
    for kind in KINDS:
        for _ in range(10):
            h = ds.users[rng.randrange(len(ds.users))].train_items()
            c = counterfactual(kind, ds, h, rng) or derive(kind, ds, h, h[-1], rng)
            if c is None:
                continue
            text = reply(ds, c, h[-10:], h[-1], rng)
            assert c.named_in(text), (kind, text)
            back = parse_reply(ds, text)
            assert back is not None, text
            assert {i for i in everything if back.satisfied(ds.items[i])} == {
                i for i in everything if c.satisfied(ds.items[i])
            }
    first = ds.users[0].train_items()[-1]
    diff = follow_up("different", ds, first, rng)
    back = parse_reply(ds, reply(ds, diff, [1, 2, 3], 5, rng), [first])
    assert back is not None and not back.satisfied(ds.items[first])
    assert parse_reply(ds, "Here is what I would pick:") is None
    # a genre in the model's own words is still heard as that genre
    for text in ("Something Sci-Fi, as you asked. With Heat in your history, I'd pick:", "More comedy, as you asked."):
        heard = parse_reply(ds, text)
        assert heard is not None and heard.kind == "genre" and heard.label in ("Sci-Fi", "Comedy"), text
    assert parse_reply(ds, "Something lighter, as you asked.").kind == "mood"
    assert unsatisfying(ds, None) == set()
    assert "fits" in why(ds, [next(i for i in everything if diff.satisfied(ds.items[i]))], diff, [1, 2, 3])[0]


def test_why_names_a_close_history_title_and_spreads_the_titles_over_the_answers(data):
    ds, _ = data
    drama = [it.idx for it in ds.items if it.genres == ["Drama"]]
    history, answers = drama[:10], drama[10:15]
    reasons = why(ds, answers, None, history)
    assert len(reasons) == 5
    heads = [f"{ds.items[i].title} ({ds.items[i].year}): " for i in answers]
    assert all(r.startswith(h) for r, h in zip(reasons, heads, strict=True))
    named = [r.split(" like ", 1)[1] for r in reasons]
    assert all(t in {ds.items[i].title for i in history} for t in named)
    assert len(set(named)) == 5  # all ten are as close: five answers name five titles
    comedy = next(it.idx for it in ds.items if it.genres == ["Comedy"])
    older_comedy = next(it.idx for it in ds.items if "Comedy" in it.genres and it.idx != comedy)
    mixed = why(ds, [comedy], None, [older_comedy, *drama[:9]])[0]
    assert mixed.endswith(f"Comedy like {ds.items[older_comedy].title}")  # the oldest, but the one comedy


def test_chat_prompt_is_the_behaviour_prompt_with_the_request_after_it(data):
    ds, index = data
    h = ds.users[0].train_items()[:5]
    msgs = chat_messages(ds, index, h, 10, [{"role": "user", "content": "No Drama please."}])
    assert msgs[-1]["role"] == "user" and msgs[-1]["content"].endswith("Recommend the next movie.\nNo Drama please.")
    with pytest.raises(ValueError, match="role"):
        chat_messages(ds, index, h, 10, [{"role": "system", "content": "x"}])
    rng = random.Random(0)
    c = counterfactual("genre", ds, h, rng)
    words = GENRE_WORDS[c.slots["genre"]]
    assert phrase(c, rng, heldout=True) in [p.format(genre=w) for p in phrasings("genre", True) for w in words]


def test_a_genre_with_no_words_is_never_asked_about(data):
    """ML-100K labels some films "unknown": an exclusion, a counterfactual or a "no more" follow-up
    built from such a history names a real genre or nothing (it once raised a KeyError)."""
    import dataclasses

    ds, index = data
    odd = dataclasses.replace(ds, items=list(ds.items))
    history = list(range(12))
    for i in history:  # a history of films labelled only "unknown", and one more genre on the last
        odd.items[i] = dataclasses.replace(ds.items[i], genres=["unknown"] + (["Drama"] if i == 11 else []))
    rng = random.Random(0)
    asked = []
    for _ in range(40):
        asked += [counterfactual("exclude", odd, history, rng), follow_up("no_more", odd, 11, rng)]
        asked += [derive("exclude", odd, history, 12, rng), follow_up("no_more", odd, 0, rng)]
    asked = [c for c in asked if c is not None]
    assert asked and all(set(c.none_of) <= set(GENRE_WORDS) for c in asked)
    assert all("unknown" not in phrase(c, rng).lower() for c in asked)


def test_the_plain_comparison_runs_on_the_chat_users_or_the_first_n_with_a_paired_interval():
    from eval.chat import paired_bootstrap_ci, plain_user_ids
    from thinkrec.errors import ThinkRecError

    assert plain_user_ids(943, [9, 19], 0) == [9, 19]
    assert plain_user_ids(943, [9, 19], 5) == [0, 1, 2, 3, 4]
    assert len(plain_user_ids(943, [9], 10_000)) == 943
    with pytest.raises(ThinkRecError, match="plain_users"):
        plain_user_ids(943, [9], -1)
    # 400 users, one model hits 100 more of them: the interval sits around +0.25 and excludes 0
    ours, theirs = [1.0] * 200 + [0.0] * 200, [1.0] * 100 + [0.0] * 300
    low, high = paired_bootstrap_ci(ours, theirs, seed=0)
    assert 0.15 < low < 0.25 < high < 0.35
    low, high = paired_bootstrap_ci(ours, ours, seed=0)  # the same answers: no gap at all
    assert low == high == 0.0


def test_requests_are_read_by_meaning_and_a_negation_never_becomes_its_opposite(ml100k, tmp_path):
    from serve.understand import RequestReader, disagrees
    from sft_data.requests import parse_label
    from thinkrec.config import DataConfig
    from thinkrec.data import load_dataset
    from thinkrec.data.synthetic_shop import write_shop

    reader = RequestReader(ml100k)

    def read(text: str):
        heard = reader.read(text)
        return None if heard is None else heard.constraint

    # negations in words the request templates never use: exclusions, never inclusions
    for text, genre in (("Spare me the comedies tonight.", "Comedy"), ("I'm sick of romantic films", "Romance"),
                        ("nothing scary please", "Horror"), ("no war movies", "War")):  # fmt: skip
        c = read(text)
        assert c.none_of == {genre} and not c.any_of and not c.all_of, (text, c)
    # values named by other words: written out, by audience, by a sub-style, by meaning
    for text, genre in (("a science-fiction film please", "Sci-Fi"), ("something the children can watch", "Children's"),
                        ("Something with cowboys", "Western"), ("a gangster flick", "Crime")):  # fmt: skip
        assert read(text).any_of == {genre}, text
    assert (read("anything from the nineties").year_min, read("anything from the nineties").year_max) == (1990, 1999)
    assert read("older than 1970 please").year_max == 1969 and read("'80s action").year_min == 1980
    mixed = read("Not in the mood for drama, maybe an adventure")
    assert mixed.any_of == {"Adventure"} and mixed.none_of == {"Drama"}
    assert read("Recommend me something") is None and read("Surprise me!") is None  # nothing to hold to
    # the model heard the opposite of what was asked: the user's words win
    said = reader.read("Spare me the comedies tonight.")
    assert disagrees(parse_label(ml100k, "Comedy"), said) and not disagrees(said.constraint, said)
    # any catalogue: the shop's categories by meaning
    shop = load_dataset(DataConfig(dataset=str(write_shop(tmp_path, users=200, items=120, seed=1))))
    shop_reader = RequestReader(shop)
    assert shop_reader.read("some headphones or a speaker").constraint.any_of == {"Audio"}
    assert shop_reader.read("no kitchen stuff, please").constraint.none_of == {"Kitchen"}


def test_a_looping_reply_is_cut_where_it_starts_to_repeat():
    from serve.understand import tidy_reply

    assert tidy_reply("Comedy, as you asked. " + "great " * 60) == "Comedy, as you asked. great"
    assert tidy_reply("You asked for it; it is it it it it.") == "You asked for it; it is it"
    assert tidy_reply("a b c a b c a b c a b c") == "a b c"
    fine = "You asked for the 1990s; you watched Heat, so this fits both:"
    assert tidy_reply(fine) == fine and len(tidy_reply("word " * 200 + "end")) <= 300
    assert tidy_reply(" ".join(f"w{i}" for i in range(100))).endswith(" ...")
