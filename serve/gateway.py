"""ThinkRec routes inside vLLM's OpenAI-compatible server, added as an HTTP middleware
(`--middleware serve.gateway.thinkrec_routes`), so one process and one port serve both.

  GET  /thinkrec/               the chat page
  GET  /thinkrec/users          a few user ids (for the page)
  POST /thinkrec/items          {"text"} -> the catalogue items its SIDs name
  POST /thinkrec/recommend      {"user_id" | "history", "k", "num_beams"} -> top-K items (beam search over the trie)
  POST /thinkrec/chat           {"user_id" | "history", "messages", "k"} -> a short reply and real items

The routes call the same server's /v1 endpoints over loopback, so they go through the engine
like any client. Requests to /v1/completions and /v1/chat/completions are checked first: a
malformed or unknown SID in the prompt is a 400 naming it, never silently served.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from serve.catalogue import Catalogue, server_catalogue
from thinkrec.errors import ThinkRecError
from tokenizer_ext.sid import SID_BEGIN

MODEL_NAME = os.environ.get("THINKREC_MODEL_NAME", "thinkrec")
PAGE = Path(__file__).with_name("chat.html")
CHECKED = ("/v1/completions", "/v1/chat/completions")
MAX_K = 50


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}}, status_code=status)


def _strings(value) -> list[str]:
    """Every string inside a request body (prompt, message contents, content parts)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


async def thinkrec_routes(request: Request, call_next) -> Response:
    path = request.url.path
    try:
        if path.startswith("/thinkrec"):
            return await _route(request, path.rstrip("/"))
        if request.method == "POST" and path in CHECKED:
            body = await request.body()
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None  # vLLM answers malformed JSON itself
            if isinstance(payload, dict):
                cat = server_catalogue()
                for field in ("prompt", "messages"):
                    for text in _strings(payload.get(field)):
                        cat.check_text(text)
    except ThinkRecError as e:
        return _error(400, str(e))
    return await call_next(request)


async def _route(request: Request, path: str) -> Response:
    if path == "/thinkrec" and request.method == "GET":
        return HTMLResponse(PAGE.read_text())
    cat = server_catalogue()
    if path == "/thinkrec/users" and request.method == "GET":
        return JSONResponse({"users": [u.user_id for u in cat.ds.users[:50]]})
    if request.method != "POST":
        return _error(404, f"no route {request.method} {path}")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    base = str(request.base_url).rstrip("/")
    if path == "/thinkrec/items":
        text = body.get("text")
        if not isinstance(text, str):
            return _error(400, "'text' (a string) is required")
        items, unknown = cat.items_in_text(text)
        return JSONResponse({"items": items, "unknown": unknown})
    if path == "/thinkrec/recommend":
        k, beams = _k(body)
        history = cat.history(body.get("user_id"), body.get("history"))
        items = await recommend(base, cat, cat.messages(history), k, beams, exclude=set(history))
        return JSONResponse({"items": items})
    if path == "/thinkrec/chat":
        return JSONResponse(await chat(base, cat, body))
    return _error(404, f"no route POST {path}")


def _k(body: dict) -> tuple[int, int]:
    k, beams = body.get("k", 10), body.get("num_beams")
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ThinkRecError(f"'k' must be an integer in 1..{MAX_K}")
    # the user's history is filtered out after the search, so search wider than k
    beams = beams if beams is not None else min(2 * MAX_K, 2 * k + 20)
    if not isinstance(beams, int) or not k <= beams <= 2 * MAX_K:
        raise ThinkRecError(f"'num_beams' must be an integer in k..{2 * MAX_K}")
    return k, beams


async def recommend(
    base: str, cat: Catalogue, messages: list[dict], k: int, beams: int, exclude: set[int], prefix_text: str = ""
) -> list[dict]:
    """Top-k catalogue items by beam search over the SID trie (vLLM beam search; the logits
    processor constrains every beam step from the prompt tail, which ends in <|sid_begin|>).
    vLLM's beam steps carry no per-request arguments, so items in `exclude` (the user's history)
    are dropped afterwards; while that leaves fewer than k, the search is rerun twice as wide,
    up to 2 x MAX_K beams."""
    prompt = cat.sid_prompt(messages, prefix_text)
    while True:
        out = await _beam_items(base, cat, prompt, beams, exclude)
        if len(out) >= k or beams >= 2 * MAX_K:
            return out[:k]
        beams = min(2 * MAX_K, 2 * beams)


async def _beam_items(base: str, cat: Catalogue, prompt: str, beams: int, exclude: set[int]) -> list[dict]:
    """The distinct catalogue items of a `beams`-wide search, best first, without `exclude`."""
    payload = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "use_beam_search": True,
        "n": beams,
        "max_tokens": cat.index.levels + 1,
        "temperature": 0.0,
        "skip_special_tokens": False,
    }
    async with httpx.AsyncClient(timeout=600) as client:
        r = await client.post(f"{base}/v1/completions", json=payload)
    if r.status_code != 200:
        raise ThinkRecError(f"engine refused the recommendation request: {r.text[:300]}")
    out, seen = [], set()
    for choice in r.json()["choices"]:
        items, _ = cat.items_in_text(SID_BEGIN + choice["text"])
        for it in items[:1]:
            idx = cat.ds.item_by_id(it["item_id"]).idx
            if idx not in exclude and idx not in seen:
                seen.add(idx)
                out.append(it)
    return out


async def chat(base: str, cat: Catalogue, body: dict) -> dict:
    """One chat turn: the model writes a short reply (SIDs it opens stay in the trie), then
    the items come from beam search after that reply, so they are real and ranked."""
    conversation = body.get("messages")
    if not isinstance(conversation, list) or not conversation or conversation[-1].get("role") != "user":
        raise ThinkRecError("'messages' must be a non-empty list ending with a user turn")
    k, beams = _k({"k": body.get("k", 3), "num_beams": body.get("num_beams")})
    history = cat.history(body.get("user_id"), body.get("history"))
    messages = cat.messages(history, conversation)
    payload = {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": int(body.get("max_tokens", 48)),
        "temperature": 0.0,
        "stop": [SID_BEGIN],
        "skip_special_tokens": False,
        "vllm_xargs": {"thinkrec": "constrain"},
    }
    async with httpx.AsyncClient(timeout=600) as client:
        r = await client.post(f"{base}/v1/chat/completions", json=payload)
    if r.status_code != 200:
        raise ThinkRecError(f"engine refused the chat request: {r.text[:300]}")
    reply = r.json()["choices"][0]["message"]["content"].strip()
    # earlier recommendations in this conversation are not repeated
    shown = {cat.ds.item_by_id(it["item_id"]).idx for t in conversation for it in cat.items_in_text(t["content"])[0]}
    items = await recommend(base, cat, messages, k, beams, set(history) | shown, reply + (" " if reply else ""))
    text = reply or "Here is what I would pick:"
    return {"reply": text, "items": items, "assistant_message": text + " " + " ".join(it["sid"] for it in items)}
