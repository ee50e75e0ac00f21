"""A headless Debian chromium driven over the Chrome DevTools Protocol (no extra driver needed):
the chat page's browser test and eval/chat_screenshot.py use it."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time

import httpx
from websockets.sync.client import connect

from serve.process import free_port


class Browser:
    def __enter__(self) -> Browser:
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        exe = shutil.which("chromium") or "chromium"
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        self.proc = subprocess.Popen(
            [exe, *flags, f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                ws = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
                break
            except (httpx.HTTPError, StopIteration, ValueError):
                if time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError("chromium did not open its DevTools port") from None
                time.sleep(0.5)
        self.ws = connect(ws, max_size=None)
        self.ids = itertools.count(1)
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def open(self, url: str) -> None:
        self._call("Page.navigate", url=url)

    def resize(self, width: int, height: int) -> None:
        self._call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def screenshot(self) -> bytes:
        """The whole page as PNG bytes."""
        import base64

        shot = self._call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])

    def eval(self, expression: str):
        result = self._call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not self.eval(f"Boolean({condition})"):
            if time.time() > deadline:
                body = self.eval("document.body ? document.body.innerText : ''")
                raise TimeoutError(f"page never satisfied {condition!r}; page text: {body[:500]!r}")
            time.sleep(0.5)
