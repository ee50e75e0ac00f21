"""How long CI takes from nothing: `git clone` of a branch into an empty folder, then `bash .ci/run`
there (set-up, the whole suite, ruff), timed end to end. Writes eval/results/ci_time.json and the
per-module times the suite printed, so tests/time_budget.json can be set from a measured run.

    python -m benchmarks.ci_time [--repo .] [--branch main] [--out eval/results/ci_time.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

MODULE_LINE = re.compile(r"^\s+(test_\w+\.py)\s+([\d.]+) s\s")


def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except (OSError, StopIteration):
        simd = "?"
    return f"{os.cpu_count()} cores, {model or platform.processor()} ({simd}), {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=".", help="the repository to clone")
    p.add_argument("--branch", default="main")
    p.add_argument("--out", type=Path, default=Path("eval/results/ci_time.json"))
    p.add_argument("--log", type=Path, default=None, help="keep CI's output here (default: beside --out)")
    p.add_argument(
        "--write-budget",
        type=Path,
        default=None,
        metavar="JSON",
        help="after a passing run, set the module shares in this budget file (tests/time_budget.json)",
    )
    p.add_argument("--from-result", type=Path, default=None, help="take the figures from an earlier --out, run nothing")
    args = p.parse_args(argv)
    if args.from_result:
        write_budget(json.loads(args.from_result.read_text()), args.write_budget)
        return 0
    repo = Path(args.repo).resolve()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", args.branch], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    log_path = args.log or args.out.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix="ci-") as tmp:
        clone = Path(tmp) / "thinkrec"
        start = time.time()
        subprocess.run(["git", "clone", "-q", "--branch", args.branch, str(repo), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "THINKREC_"))}
        proc = subprocess.run(["bash", ".ci/run"], cwd=clone, env=env, capture_output=True, text=True, errors="replace")
        wall = time.time() - start
    output = proc.stdout + proc.stderr
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(output)
    setup = re.search(r"set-up took (\d+) s", output)
    summary = next((line for line in reversed(output.splitlines()) if re.match(r"^=+ .* in [\d.]+s", line)), "")
    passed = re.search(r"(\d+) passed", summary)
    failed = re.search(r"(\d+) (?:failed|error)", summary)
    modules = {m.group(1): float(m.group(2)) for line in output.splitlines() if (m := MODULE_LINE.match(line))}
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "wall_minutes": round(wall / 60, 1),
        "setup_minutes": round(int(setup.group(1)) / 60, 1) if setup else None,
        "tests_passed": int(passed.group(1)) if passed else 0,
        "tests_failed": int(failed.group(1)) if failed else 0,
        "exit_status": proc.returncode,
        "commit": commit,
        "command": f"git clone --branch {args.branch} <repo> <empty folder> && bash .ci/run",
        "module_seconds": modules,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "module_seconds"}, indent=1))
    if args.write_budget and proc.returncode == 0:
        write_budget(result, args.write_budget)
    return proc.returncode


def write_budget(result: dict, path: Path | None) -> None:
    """Each module's measured share of the run, rounded up to a tenth of a percent."""
    if path is None or not result["module_seconds"]:
        return
    budget = json.loads(path.read_text())
    total = sum(result["module_seconds"].values())
    budget["modules"] = {m: math.ceil(1000 * s / total) / 1000 for m, s in sorted(result["module_seconds"].items())}
    budget["measured"] = f"{result['date']}, {result['machine']}, commit {result['commit'][:7]}"
    path.write_text(json.dumps(budget, indent=1) + "\n")
    print(f"wrote the measured shares into {path}")


if __name__ == "__main__":
    sys.exit(main())
