"""A small client for a running `thinkrec serve`: items instead of tokens.

client = ThinkRecClient("http://127.0.0.1:8000")
client.recommend(user_id="1", k=10)            # top-10 items by beam search over the trie
client.chat(user_id="1", messages=[{"role": "user", "content": "something lighter"}])
client.items("<|sid_begin|><s_a_3><s_b_1><s_c_7><|sid_end|>")   # SIDs in any text -> items
client.openai.chat.completions.create(...)     # the plain OpenAI client on the same server
"""

from __future__ import annotations

import httpx

from thinkrec.errors import ThinkRecError


class ThinkRecClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    @property
    def openai(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url + "/v1", api_key="EMPTY")

    def _post(self, path: str, body: dict) -> dict:
        r = self.http.post(path, json=body)
        data = r.json()
        if r.status_code != 200:
            raise ThinkRecError(data.get("error", {}).get("message", r.text))
        return data

    def recommend(self, user_id: str | None = None, history: list[str] | None = None, k: int = 10) -> list[dict]:
        return self._post("/thinkrec/recommend", {"user_id": user_id, "history": history, "k": k})["items"]

    def chat(
        self, messages: list[dict], user_id: str | None = None, history: list[str] | None = None, k: int = 3
    ) -> dict:
        return self._post("/thinkrec/chat", {"user_id": user_id, "history": history, "messages": messages, "k": k})

    def items(self, text: str) -> list[dict]:
        return self._post("/thinkrec/items", {"text": text})["items"]


def terminal_chat(url: str, user_id: str, k: int = 3) -> None:
    """An interactive chat in the terminal; an empty line or Ctrl-D ends it."""
    client = ThinkRecClient(url)
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
        print(f"thinkrec> {out['reply']}")
        for it in out["items"]:
            print(f"   - {it['title']} ({it['year']}) {', '.join(it['genres'])}")
        messages.append({"role": "assistant", "content": out["assistant_message"]})
