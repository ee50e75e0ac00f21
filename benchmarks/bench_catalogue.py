"""Large-catalogue benchmark: RQ-Kmeans, the SID index and trie, and the constraint's per-step cost
as the catalogue grows to a million items (synthetic embeddings stand in for content: a shop taxonomy
by default, `--embeddings blobs` for tight clusters that no codebook separates).

    python -m benchmarks.bench_catalogue --sizes 10000,100000,1000000

For each size: time and peak memory to fit the codebooks and give every item a unique code, to
build the item <-> SID index and the token trie, and the cost of one decoding step of the trie
mask (`serve.trie_masker.TrieMasker`, what the vLLM logits processor runs) for batches of 1, 32
and 256 rows, against the same step without the mask. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from serve.trie_masker import TrieMasker
from tokenizer_ext.rq_kmeans import auto_codebook_size, fit_rq_kmeans
from tokenizer_ext.sid import SIDIndex, TokenTrie, sid_tokens

TEXT_VOCAB = 49152  # the base LLM's vocabulary; SID tokens come after it
EOS = 2


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        self.proc, self.start, self.peak, self._stop = psutil.Process(), 0, 0, threading.Event()
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def gib(self) -> float:
        return (self.peak - self.start) / 2**30


def taxonomy_embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """Vectors of a shop's taxonomy: category, subcategory and product line offsets (scales 1, 0.7,
    0.5; 64 x 16 groups, about 20 items a line) plus the item's own part (scale 1). The item's share
    is set so that 2,000 items at K = 32 re-home 15% of their codes, as MovieLens-100K's real
    embeddings do (235 of 1,349 items, 17%): near items share coarse structure and differ finely."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    groups = np.zeros(n, dtype=np.int64)
    for fanout, scale in [(64, 1.0), (16, 0.7), (max(1, n // (64 * 16 * 20)), 0.5)]:
        groups = groups * fanout + rng.integers(0, fanout, n)
        uniq, inverse = np.unique(groups, return_inverse=True)
        x += scale * rng.normal(size=(len(uniq), dim)).astype(np.float32)[inverse] / np.sqrt(dim)
    return x + rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)


def synthetic_embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered vectors (a Gaussian mixture of n/500 tight blobs): the hard case for codes, since
    the 500 items of a blob differ only by noise that no codebook level resolves."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(16, n // 500), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return x


def step_cost_ms(trie: TokenTrie, batch: int, masked: bool, steps: int = 30, seed: int = 0) -> float:
    """Mean wall time of one decoding step (mask + greedy pick) over a batch of SID-only rows."""
    vocab = TEXT_VOCAB + len(trie.code_ids) + 2
    gen = torch.Generator().manual_seed(seed)
    logits_pool = [torch.randn(batch, vocab, generator=gen) for _ in range(4)]
    masker = TrieMasker(trie, [EOS])
    outputs = [[] for _ in range(batch)]
    for r in range(batch):
        masker.add(r, "items", [1], outputs[r])
    elapsed = 0.0
    for s in range(steps):
        logits = logits_pool[s % 4].clone()
        t = time.perf_counter()
        if masked:
            masker.advance()
            logits = masker.apply(logits)
        picks = logits.argmax(-1).tolist()
        elapsed += time.perf_counter() - t
        for r in range(batch):
            outputs[r].append(picks[r])
    return 1000 * elapsed / steps


def random_codes(n: int, levels: int, k: int, seed: int) -> np.ndarray:
    """n distinct codes drawn uniformly: for timing the trie and the mask without fitting RQ-Kmeans."""
    flat = np.random.default_rng(seed).choice(k**levels, size=n, replace=False)
    return np.stack([(flat // k ** (levels - 1 - lv)) % k for lv in range(levels)], axis=1)


EMBEDDINGS = {"taxonomy": taxonomy_embeddings, "blobs": synthetic_embeddings}


def bench_size(
    n: int,
    dim: int,
    levels: int,
    k: int,
    iters: int,
    batches: list[int],
    seed: int,
    fit: bool = True,
    embeddings: str = "taxonomy",
    fit_sample: int = 100_000,
) -> dict:
    k = k or max(256, auto_codebook_size(n, levels))
    x = EMBEDDINGS[embeddings](n, dim, seed)
    with PeakRSS() as mem:
        t = time.perf_counter()
        if fit:
            rq = fit_rq_kmeans(x, levels, k, iters, seed, balanced=True, fit_sample=fit_sample)
            codes, moved = rq.codes, rq.collisions_resolved
        else:
            codes, moved = random_codes(n, levels, k, seed), None
        fit_s = time.perf_counter() - t
    with PeakRSS() as mem_trie:
        t = time.perf_counter()
        index = SIDIndex([tuple(int(c) for c in row) for row in codes], levels, k)
        vocab = {tok: TEXT_VOCAB + i for i, tok in enumerate(sid_tokens(levels, k))}
        trie = TokenTrie(index, vocab)
        trie_s = time.perf_counter() - t
    row = {
        "items": n,
        "codebook_size": k,
        "codes": "rq-kmeans" if fit else "random",
        "embeddings": embeddings,
        "fit_sample": fit_sample,
        "collisions_resolved": moved,
        "collision_share": None if moved is None else moved / n,
        "unique": len(index.item_of) == n,
        "rq_fit_s": fit_s,
        "rq_peak_gib": mem.gib,
        "trie_build_s": trie_s,
        "trie_peak_gib": mem_trie.gib,
        "trie_nodes": len(trie.allowed_by_prefix),
        "step_ms": {},
    }
    for b in batches:
        row["step_ms"][b] = {"masked": step_cost_ms(trie, b, True), "unmasked": step_cost_ms(trie, b, False)}
    return row


def _report(rows: list[dict]) -> dict:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": psutil.cpu_count(),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=0, help="0 = max(256, sized to the catalogue)")
    p.add_argument("--kmeans-iters", type=int, default=20)
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-codes", action="store_true", help="skip RQ-Kmeans: time the index, trie and mask only")
    p.add_argument("--embeddings", choices=sorted(EMBEDDINGS), default="taxonomy", help="the synthetic item vectors")
    p.add_argument("--fit-sample", type=int, default=100_000, help="items the codebooks are fitted on; 0 = all")
    p.add_argument("--out", default="runs/bench/catalogue.json")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(
            bench_size(
                n,
                args.dim,
                args.levels,
                args.codebook_size,
                args.kmeans_iters,
                batches,
                args.seed,
                not args.random_codes,
                args.embeddings,
                args.fit_sample,
            )
        )
        print(f"done {n} items: {json.dumps(rows[-1])}", flush=True)
        out.write_text(json.dumps(_report(rows), indent=2))  # each size kept as soon as it is measured
    print(f"\n{'items':>9}{'K':>5}{'moved':>7}{'RQ s':>8}{'RQ GiB':>8}{'trie s':>8}{'trie GiB':>9}", end="")
    print("".join(f"{'step@' + str(b) + ' ms':>16}" for b in batches))
    for r in rows:
        print(
            f"{r['items']:>9}{r['codebook_size']:>5}{str(r['collisions_resolved']):>7}{r['rq_fit_s']:>8.1f}"
            f"{r['rq_peak_gib']:>8.2f}{r['trie_build_s']:>8.1f}{r['trie_peak_gib']:>9.2f}",
            end="",
        )
        print("".join(f"{s['masked']:>8.2f} ({s['unmasked']:.2f})" for s in r["step_ms"].values()))
    print("step@B: one decoding step with the trie mask (without it, in brackets), B rows, vocab ~49k")
    print(f"written: {out}")
    return rows


if __name__ == "__main__":
    main()
