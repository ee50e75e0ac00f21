"""The `data` stage as a catalogue grows: the seeded synthetic shop (thinkrec/data/synthetic_shop.py)
at each size, written as a user's files, then `thinkrec data` on its config (read, parse times and
events, k-core, order, write the run's files). Wall time and peak memory per step, and the growth
exponent between sizes (seconds ~ interactions^b). Prints a table and writes JSON.

    python -m benchmarks.bench_data --items 10000,100000,1000000 --per-item 10 --out eval/results/scale_data.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.bench_catalogue import PeakRSS
from thinkrec.config import DataConfig
from thinkrec.data.stage import prepare
from thinkrec.data.synthetic_shop import write_shop
from thinkrec.rundir import RunDir


def measure(items: int, interactions: int, work: Path, seed: int = 0) -> list[dict]:
    folder = work / f"shop_{items}"
    rows = []
    with PeakRSS() as mem:
        t = time.time()
        config = write_shop(folder, users=max(1, interactions // 20), items=items, events=interactions, seed=seed)
        rows.append({"stage": "generate (not a stage)", "seconds": time.time() - t, "peak_rss_mb": mem.peak / 2**20})
    with PeakRSS() as mem:
        t = time.time()
        ds = prepare(DataConfig(dataset=str(config)), RunDir(work / f"run_{items}"))
        rows.append({"stage": "data", "seconds": time.time() - t, "peak_rss_mb": mem.peak / 2**20})
    stats = ds.stats()
    for r in rows:
        r.update(
            items=items, interactions=interactions, kept_items=stats["items"], kept_interactions=stats["interactions"]
        )
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(work / f"run_{items}", ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", default="10000,100000", help="catalogue sizes, comma-separated")
    p.add_argument("--per-item", type=int, default=10, help="interactions per item")
    p.add_argument("--out", type=Path, default=Path("eval/results/scale_data.json"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for n in (int(s) for s in args.items.split(",")):
            rows += measure(n, n * args.per_item, Path(tmp))
            print(json.dumps(rows[-1]), flush=True)
    data = [r for r in rows if r["stage"] == "data"]
    growth = [
        round(math.log(b["seconds"] / a["seconds"]) / math.log(b["interactions"] / a["interactions"]), 2)
        for a, b in zip(data, data[1:], strict=False)
    ]
    print("| items | interactions | stage | seconds | peak RSS MB |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['items']:,} | {r['interactions']:,} | {r['stage']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    print(f"data stage growth exponents (seconds ~ interactions^b): {growth}")
    out = {"machine": f"{os.cpu_count()} cores", "date": date.today().isoformat(), "rows": rows, "growth": growth}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
