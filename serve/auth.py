"""The API key, checked for every route of the server (vLLM itself guards only /v1 and a few
prefixes). `thinkrec serve --api-key K` (or THINKREC_API_KEY) hands the key to the server process
as VLLM_API_KEY, so vLLM's own check on /v1 and this one agree, and the key is not on a command line.

Clients send `Authorization: Bearer K`, as the OpenAI client does. A browser cannot add that header
when it opens the chat page, so /thinkrec/?api_key=K sets it as an HttpOnly cookie (and redirects
to the bare URL); the page's own requests then carry the cookie.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from starlette.requests import Request

COOKIE = "thinkrec_key"
OPEN = ("/health", "/ping")  # liveness probes stay open: they reveal nothing and supervisors need them


def server_key() -> str:
    return os.environ.get("VLLM_API_KEY", "")


def _same(a: str, b: str) -> bool:
    # compare digests so the time taken says nothing about the key
    return secrets.compare_digest(hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest())


def presented_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    return request.cookies.get(COOKIE)


def authorised(request: Request, key: str) -> bool:
    if not key or request.method == "OPTIONS" or request.url.path in OPEN:
        return True
    given = presented_key(request)
    return given is not None and _same(given, key)


def page_key(request: Request, key: str) -> bool:
    """Whether the page was opened with the right ?api_key= (then the gateway sets the cookie)."""
    given = request.query_params.get("api_key")
    return bool(key) and given is not None and _same(given, key)
