"""Every command the README and docs/ show still parses at HEAD: a removed or renamed flag breaks the
build, not the reader. `thinkrec ...` lines go through the real argument parser; `python -m X ...`
lines must name a module that exists and flags its source defines."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from cli.main import _split_vllm_args, parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`((?:\.venv/bin/)?(?:thinkrec|python3? -m) [^`]+)`")


def shell_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command) for every command of the page's shell blocks (continuation lines joined,
    comments dropped, `a && b` and `a; b` split) and every `thinkrec ...` / `python -m ...` quoted
    in its text."""
    out = []
    for m in FENCE.finditer(page.read_text()):
        if m.group(1) not in ("", "bash", "sh", "shell", "console"):
            continue
        text = re.sub(r"\\\n\s*", " ", m.group(2))
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"&&|;|\|", line):
                part = part.strip()
                if part:
                    out.append((f"{page.name}: {line[:60]}", part))
    prose = FENCE.sub("", page.read_text())  # commands quoted in the text: placeholders for values
    out += [(f"{page.name} (text): {m.group(1)[:60]}", m.group(1)) for m in INLINE.finditer(prose.replace("\n", " "))]
    return out


def _argv(command: str) -> tuple[str, list[str]] | None:
    """("thinkrec" | "python", argv) for a command this test checks, else None."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return None
    if words[0].endswith("thinkrec"):
        return "thinkrec", words[1:]
    if "-m" in words and ("python" in words[0] or words[0] in ("accelerate", "torchrun")):
        i = words.index("-m")
        module, rest = words[i + 1], words[i + 2 :]
        return ("thinkrec", rest) if module == "cli" else ("python", [module, *rest])
    return None


CASES = [(where, argv) for page in PAGES for where, cmd in shell_commands(page) if (argv := _argv(cmd))]


def test_the_pages_show_commands():
    assert sum(kind == "thinkrec" for _, (kind, _) in CASES) >= 20


@pytest.mark.parametrize(("where", "argv"), CASES, ids=[f"{w} [{i}]" for i, (w, _) in enumerate(CASES)])
def test_every_documented_command_parses(where, argv):
    kind, words = argv
    if kind == "thinkrec":
        own, _ = _split_vllm_args(words)
        command = next((w for w in own if not w.startswith("-")), "")
        if command.startswith("<"):  # `thinkrec <stage> --help`
            return
        stages = parser()._subparsers._group_actions[0].choices
        assert command in stages, f"{where}: no command {command!r}"
        known = stages[command]._option_string_actions
        unknown = [w.split("=")[0] for w in own if w.startswith("--") and w.split("=")[0] not in known]
        assert not unknown, f"{where}: `thinkrec {command}` has no {', '.join(unknown)}"
        if "(text)" not in where:  # a shell block's values are real: the whole line parses
            try:
                parser().parse_args(own)
            except SystemExit as e:
                pytest.fail(f"{where}: `thinkrec {' '.join(words)}` does not parse (exit {e.code})")
        return
    module, *rest = words
    if module == "pytest":
        return
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{where}: no module {module}"
    source = Path(spec.origin).read_text()
    for flag in (w.split("=")[0] for w in rest if w.startswith("--")):
        assert f'"{flag}"' in source, f"{where}: {module} defines no {flag}"
