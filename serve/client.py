"""A small client for a running `thinkrec serve`: items instead of tokens.

client = ThinkRecClient("http://127.0.0.1:8000")              # api_key=..., or THINKREC_API_KEY
client.recommend(user_id="1", k=10)            # top-10 items by beam search over the trie
client.chat(user_id="1", messages=[{"role": "user", "content": "something lighter"}])
client.items("<|sid_begin|><s_a_3><s_b_1><s_c_7><|sid_end|>")   # SIDs in any text -> items
client.openai.chat.completions.create(...)     # the plain OpenAI client on the same server
"""

from __future__ import annotations

import os

import httpx

from thinkrec.errors import ThinkRecError


class ThinkRecClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 600.0, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("THINKREC_API_KEY", "")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    @property
    def openai(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key or "EMPTY")

    def _post(self, path: str, body: dict) -> dict:
        r = self.http.post(path, json={k: v for k, v in body.items() if v is not None})
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code != 200:
            error = data.get("error") if isinstance(data, dict) else None
            raise ThinkRecError(error.get("message", r.text) if isinstance(error, dict) else r.text)
        return data

    def recommend(
        self, user_id: str | None = None, history: list[str] | None = None, k: int = 10, num_beams: int | None = None
    ) -> list[dict]:
        body = {"user_id": user_id, "history": history, "k": k, "num_beams": num_beams}
        return self._post("/thinkrec/recommend", body)["items"]

    def chat(
        self, messages: list[dict], user_id: str | None = None, history: list[str] | None = None, k: int = 3
    ) -> dict:
        return self._post("/thinkrec/chat", {"user_id": user_id, "history": history, "messages": messages, "k": k})

    def items(self, text: str) -> list[dict]:
        return self._post("/thinkrec/items", {"text": text})["items"]


def terminal_chat(url: str, user_id: str, k: int = 3, api_key: str | None = None) -> None:
    """An interactive chat in the terminal; an empty line or Ctrl-D ends it."""
    client = ThinkRecClient(url, api_key=api_key)
    messages: list[dict] = []
    print(f"ThinkRec chat as user {user_id} (empty line to quit)")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        messages.append({"role": "user", "content": text})
        try:
            out = client.chat(messages, user_id=user_id, k=k)
        except ThinkRecError as e:
            print(f"error: {e}")
            messages.pop()
            continue
        if len(messages) == 1:  # the history the answers are judged against
            verb = out.get("history_verb", "seen")
            print(f"recently {verb}: " + "; ".join(h["label"] for h in out.get("history", [])))
        print(f"thinkrec> {out['reply']}")
        for it in out["items"]:
            print(f"   - {it.get('why') or it['label']}")
        messages.append({"role": "assistant", "content": out["assistant_message"]})
