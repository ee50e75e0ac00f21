"""A screenshot of the chat page answering real requests: `thinkrec serve` on a run, Debian's
headless chromium typing the turns, the page saved as PNG (the README's picture comes from here).

    python -m eval.chat_screenshot --run-dir runs/demo --out docs/chat_page.png
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from eval.browser import Browser
from serve.process import Server
from thinkrec.errors import ThinkRecError

TURNS = ("Something with more Sci-Fi, please.", "Older than that.")


def capture(run_dir: Path, out: Path, user: str, turns: tuple[str, ...]) -> list[str]:
    """Serve the run, chat `turns` as `user` on the page, save the page; returns the page's turns."""
    if shutil.which("chromium") is None:
        raise ThinkRecError("needs Debian's chromium (apt-get install chromium)")
    server = Server(run_dir, log=run_dir / "chat_screenshot.server.log")
    try:
        with Browser() as page:
            page.resize(1000, 900)
            page.open(server.url + "/thinkrec/")
            page.wait_for("document.querySelectorAll('#user option').length > 0")
            if user:
                page.eval(f"document.getElementById('user').value = {user!r}")
            for n, text in enumerate(turns, start=1):
                page.eval(f"document.getElementById('input').value = {text!r}")
                page.eval("document.getElementById('send').click()")
                page.wait_for(f"document.querySelectorAll('ul.items').length >= {n}", timeout=600)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(page.screenshot())
            return page.eval("[...document.querySelectorAll('#log .turn, #log .history')].map(d => d.innerText)")
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="a run with a trained model")
    p.add_argument("--out", type=Path, default=Path("docs/chat_page.png"), help="where the PNG goes")
    p.add_argument("--user", default="", help="user id to chat as (default: the page's first user)")
    p.add_argument("--turn", action="append", help="a user turn (repeat the flag); default: two turns")
    args = p.parse_args(argv)
    for line in capture(args.run_dir, args.out, args.user, tuple(args.turn or TURNS)):
        print(line)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
