"""How adding items (`thinkrec add-items`) scales with the catalogue it joins: the new items' SIDs
from fixed codebooks against N taken codes, the grown SID index and trie, and writing the index.

    python -m benchmarks.bench_add_items --sizes 10000,100000,1000000 --new 1000

Synthetic stand-ins: clustered embeddings (benchmarks/bench_catalogue.py) for the new items, the
codebooks fit on a 20,000-item sample, and the catalogue's N codes drawn at random without
repeats (what matters for the cost is how many are taken). The text encoder's time for the new
items' content is measured separately (`--embed`, the real encoder on the synthetic shop's titles),
since it does not depend on N. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_catalogue import PeakRSS, synthetic_embeddings
from tokenizer_ext.rq_kmeans import assign_codes, fit_rq_kmeans
from tokenizer_ext.sid import SIDIndex


def one_size(n: int, new: int, dim: int, levels: int, k: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sample = synthetic_embeddings(20_000, dim, seed)
    books = fit_rq_kmeans(sample, levels, k, iters=20, seed=seed, balanced=False).codebooks
    flat = rng.choice(k**levels, size=n, replace=False)
    taken = [tuple(int(c) for c in np.unravel_index(f, [k] * levels)) for f in flat]
    x_new = synthetic_embeddings(new, dim, seed + 1)
    row: dict = {"catalogue": n, "new": new}
    with PeakRSS() as mem:
        t = time.perf_counter()
        codes, moved = assign_codes(x_new, books, taken)
        row["assign_s"] = time.perf_counter() - t
        t = time.perf_counter()
        index = SIDIndex([*taken, *(tuple(int(c) for c in r) for r in codes)], levels, k)
        row["index_s"] = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            index.save(Path(tmp) / "sid_index.json")
            row["save_s"] = time.perf_counter() - t
    row["moved"], row["peak_gib"] = moved, mem.gib
    row["total_s"] = row["assign_s"] + row["index_s"] + row["save_s"]
    return row


def embed_seconds(new: int) -> float:
    """The real text encoder over `new` product texts of the synthetic shop."""
    from thinkrec.data.synthetic_shop import make_catalogue
    from tokenizer_ext.embed import default_embed_model, embed_texts

    items = make_catalogue(new, np.random.default_rng(0))
    texts = [f"{r.title}. Category: {r.category}. Brand: {r.brand}. Price: ${r.price}." for r in items.itertuples()]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # no cache: every text is embedded
        embed_texts(texts, str(default_embed_model()), Path(tmp))
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--new", type=int, default=1000)
    p.add_argument("--dim", type=int, default=448, help="embedding width (content 384 + collaborative 64)")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--embed", action="store_true", help="also time the real text encoder on --new texts")
    p.add_argument("--out", type=Path, default=Path("eval/results/add_items.json"))
    args = p.parse_args(argv)
    rows = [one_size(int(n), args.new, args.dim, args.levels, args.codebook_size, 0) for n in args.sizes.split(",")]
    result = {
        "what": "thinkrec add-items: SIDs for new items from fixed codebooks against N taken codes, the grown "
        "index and trie, writing it (synthetic embeddings; random taken codes)",
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores",
        "command": "python -m benchmarks.bench_add_items " + " ".join(argv or []),
        "levels": args.levels,
        "codebook_size": args.codebook_size,
        "rows": rows,
    }
    if args.embed:
        result["embed_new_items_s"] = embed_seconds(args.new)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{'catalogue':>10} {'new':>6} {'assign s':>9} {'index s':>8} {'save s':>7} {'moved':>6} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['catalogue']:>10} {r['new']:>6} {r['assign_s']:>9.2f} {r['index_s']:>8.2f} {r['save_s']:>7.2f} "
              f"{r['moved']:>6} {r['peak_gib']:>9.2f}")  # fmt: skip
    if args.embed:
        print(f"text encoder on {args.new} new items: {result['embed_new_items_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
