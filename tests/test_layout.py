"""The packages form layers: each imports only the ones before it in LAYERS (at module level or
inside a function), so a lower module never pulls in a stage that runs after it and no two
packages import each other. The `thinkrec` command (cli/) calls every stage, so it is the top."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    "thinkrec",
    "seqrec",
    "backbone",
    "tokenizer_ext",
    "sft_data",
    "model",
    "ranking",
    "rl",
    "serve",
    "eval",
    "benchmarks",
    "cli",
]
IMPORT = re.compile(r"^\s*(?:from|import)\s+(\w+)", re.MULTILINE)


def imports_of(package: str) -> dict[str, set[str]]:
    """For each project package this one imports, the files that do."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).glob("*.py"):
        for name in IMPORT.findall(path.read_text()):
            if name in LAYERS and name != package:
                found.setdefault(name, set()).add(path.name)
    return found


def test_every_package_imports_only_lower_layers():
    wrong = []
    for rank, package in enumerate(LAYERS):
        for target, files in imports_of(package).items():
            if LAYERS.index(target) > rank:
                wrong.append(f"{package}/{{{','.join(sorted(files))}}} imports {target}")
    assert not wrong, "imports against the layer order: " + "; ".join(wrong)


def test_the_layers_name_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(LAYERS), packages ^ set(LAYERS)
