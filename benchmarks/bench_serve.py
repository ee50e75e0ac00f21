"""Serving benchmark: top-K recommendation through `thinkrec serve` (the /thinkrec/recommend route:
the engine-side trie beam search of serve/search.py) against eval's HF trie beam search on the
same model folder, the same prompts and the same beam width, and what vLLM's own beam search and
the trie constraint cost on the same engine.

    python -m benchmarks.bench_serve --run-dir runs/demo --concurrency 1,8,32 --requests 32

Workloads, each at every concurrency level C (C requests in flight at once, closed loop):
  - thinkrec recommend:  POST /thinkrec/recommend {"user_id", "k", "num_beams": k} over HTTP;
  - hf beam:             ranking.generate.beam_recommend (HF forward passes, KV cache, the same trie
                         mask, num_beams = k), the requests answered in static batches of C, every
                         request of a batch waiting for all of it;
  - vllm beam:           POST /v1/completions with use_beam_search, n = K (vLLM's frontend beam search);
  - vllm sample constrained / free: n = K sampled codes per request, vllm_xargs thinkrec = "items"
                         against "off" on the same engine: what the constraint costs.
Each concurrency level gets its own users (`--requests` of them), the same for every workload, so
no row is served from prompts that an earlier row left in vLLM's prefix cache. The two engines run
one after the other, never side by side. Throughput is requests/s and SID code tokens/s (K codes x
levels tokens per request); latency is the p50 and p99 of per-request wall time. Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shlex
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from backbone.llm import load_causal_lm
from ranking.generate import beam_recommend
from serve.catalogue import Catalogue
from serve.process import Server
from thinkrec.errors import ThinkRecError
from tokenizer_ext.sid import SID_BEGIN, TokenTrie, find_sids


def _server_cpu_s(server: Server) -> float:
    """CPU seconds (user + system) used so far by the server and all its processes."""
    import psutil

    root = psutil.Process(server.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(name: str, c: int, latencies: list[float], wall: float, tokens: int, legal: float, cpu_s: float) -> dict:
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
        # CPU time per request: what the work costs, less swayed than wall time by other load on the machine
        "cpu_s_per_request": cpu_s / len(latencies),
    }


async def _closed_loop(
    url: str, bodies: list[dict], c: int, path: str = "/v1/completions", headers: dict | None = None
) -> tuple[list[float], float, list[dict]]:
    """Send `bodies` with `c` in flight at once; per-request latencies, total wall time, responses."""
    queue = list(enumerate(bodies))
    latencies, answers = [0.0] * len(bodies), [{}] * len(bodies)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i, body = queue.pop(0)
            t = time.perf_counter()
            r = await client.post(url + path, json=body)
            latencies[i] = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"request {i} failed: {r.status_code} {r.text[:300]}")
            answers[i] = r.json()

    t = time.perf_counter()
    limits = httpx.Limits(max_connections=c + 4)
    async with httpx.AsyncClient(timeout=1200, limits=limits, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(c)))
    return latencies, time.perf_counter() - t, answers


def _item_legality(cat: Catalogue, answers: list[dict], k: int) -> float:
    """Share of the k asked-for items that came back as real catalogue items (a missing one counts as illegal)."""
    legal = 0
    for a in answers:
        for it in a["items"][:k]:
            try:
                legal += cat.index.item(it["sid"]) == cat.ds.item_by_id(str(it["item_id"])).idx
            except ThinkRecError:
                pass
    return legal / max(1, k * len(answers))


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


def bench_vllm(
    run_dir: Path,
    cat: Catalogue,
    users: dict[int, list],
    workloads: list[str],
    k: int,
    dtype: str,
    serve_flags: list[str] = (),
) -> list[dict]:
    rows = []
    flags = ["--dtype", dtype, "--max-model-len", "1024", "--max-num-seqs", "256", "--model-dir", str(cat.model_dir)]
    flags += list(serve_flags)
    server = Server(run_dir, *flags)
    try:
        beam = {"model": "thinkrec", "n": k, "max_tokens": cat.index.levels + 1, "temperature": 0.0}
        beam |= {"use_beam_search": True, "skip_special_tokens": False}
        sample = {"model": "thinkrec", "n": k, "max_tokens": cat.index.levels + 1, "temperature": 1.0}
        sample |= {"skip_special_tokens": False}

        def prompt(u) -> str:
            return cat.sid_prompt(cat.messages(u.items))

        def xargs(mode: str) -> dict:
            return {"vllm_xargs": {"thinkrec": mode}}

        route = "/thinkrec/recommend"
        makers = {
            "thinkrec recommend": (route, lambda u: {"user_id": u.user_id, "k": k, "num_beams": k}),
            "vllm beam": ("/v1/completions", lambda u: {**beam, "prompt": prompt(u)}),
            "vllm sample constrained": ("/v1/completions", lambda u: {**sample, "prompt": prompt(u), **xargs("items")}),
            "vllm sample free": ("/v1/completions", lambda u: {**sample, "prompt": prompt(u), **xargs("off")}),
        }  # fmt: skip
        warm_users = users[-1][:4]  # warm-up on users no measured row uses
        tokens_per_request = k * cat.index.levels
        for name in [w for w in workloads if w in makers]:
            path, make = makers[name]
            asyncio.run(_closed_loop(server.url, [make(u) for u in warm_users], 4, path))
            for c, group in users.items():
                if c < 0:
                    continue
                bodies = [make(u) for u in group]
                cpu = _server_cpu_s(server)
                lat, wall, answers = asyncio.run(_closed_loop(server.url, bodies, c, path))
                cpu = _server_cpu_s(server) - cpu
                legal = _item_legality(cat, answers, k) if path == route else _legality(cat, answers)
                rows.append(_summary(name, c, lat, wall, tokens_per_request * len(bodies), legal, cpu))
                print(f"done {name} @ {c}: {rows[-1]['requests_per_s']:.2f} req/s", flush=True)
    finally:
        server.stop()
    return rows


def bench_hf(cat: Catalogue, users: dict[int, list], k: int, dtype: str) -> list[dict]:
    tok, model = load_causal_lm(cat.model_dir, dtype)
    model.eval()
    trie = TokenTrie(cat.index, tok)
    warm = [cat.messages(u.items) for u in users[-1][:2]]
    beam_recommend(model, tok, trie, cat.index.lookup, warm, k, 2, modes=(True,), desc="warm-up")
    rows = []
    for c, group in users.items():
        if c < 0:
            continue
        messages = [cat.messages(u.items) for u in group]
        exclude = [{cat.index.codes[i] for i in u.items} for u in group]  # as the route excludes seen items
        latencies, legal, total = [], 0, 0
        t, cpu = time.perf_counter(), _own_cpu_s()
        for start in range(0, len(messages), c):
            wave, skip = messages[start : start + c], exclude[start : start + c]
            t_wave = time.perf_counter()
            out = beam_recommend(
                model, tok, trie, cat.index.lookup, wave, k, c, modes=(True,), desc=f"hf @ {c}", exclude=skip
            )[True]
            latencies += [time.perf_counter() - t_wave] * len(wave)
            legal, total = legal + out.legal, total + out.total
        wall, cpu = time.perf_counter() - t, _own_cpu_s() - cpu
        tokens = k * cat.index.levels * len(messages)
        rows.append(_summary("hf beam", c, latencies, wall, tokens, legal / total, cpu))
        print(f"done hf beam @ {c}: {rows[-1]['requests_per_s']:.2f} req/s", flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'workload':<25}{'conc':>5}{'req/s':>8}{'tok/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'legal':>7}{'cpu s/req':>10}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['workload']:<25}{r['concurrency']:>5}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>9.1f}"
            f"{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['legality']:>7.2f}{r.get('cpu_s_per_request', 0):>10.2f}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    """ThinkRec's route over HF beam search (requests/s): per concurrency, and each level over HF at 1."""
    by = {(r["workload"], r["concurrency"]): r["requests_per_s"] for r in rows}
    hf1 = by.get(("hf beam", 1))
    out: dict = {"per_concurrency": [], "over_hf_at_1": []}
    for c in sorted({r["concurrency"] for r in rows}):
        ours, hf = by.get(("thinkrec recommend", c)), by.get(("hf beam", c))
        if ours and hf:
            out["per_concurrency"].append({"concurrency": c, "thinkrec_over_hf": ours / hf})
        if ours and hf1:
            out["over_hf_at_1"].append({"concurrency": c, "thinkrec_over_hf_at_1": ours / hf1})
        free, cons = by.get(("vllm sample free", c)), by.get(("vllm sample constrained", c))
        if free and cons:
            out.setdefault("constrained_over_free", []).append({"concurrency": c, "ratio": cons / free})
    return out


WORKLOADS = "thinkrec recommend,hf beam"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--model-dir", default="", help="serve and run this HF folder (default: the run's best model)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=32, help="requests (users) per workload and concurrency level")
    p.add_argument("--k", type=int, default=10, help="items per recommendation (and the beam width)")
    p.add_argument("--dtype", default="float32", help="both engines run this dtype")
    p.add_argument("--workloads", default=WORKLOADS, help="comma-separated: also vllm beam, vllm sample free, ...")
    p.add_argument("--serve-flags", default="", help="more `thinkrec serve` flags, e.g. '--block-size 64'")
    p.add_argument("--out", default="runs/bench/serve.json")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    run_dir = Path(args.run_dir)
    cat = Catalogue.from_run(run_dir, args.model_dir or None)
    pool = cat.ds.users
    if len(pool) < args.requests * len(levels) + 4:
        raise ThinkRecError(f"{len(pool)} users cannot give {args.requests} fresh ones to each of {len(levels)} rows")
    # disjoint users per concurrency level (key -1: warm-up users)
    users = {c: pool[i * args.requests : (i + 1) * args.requests] for i, c in enumerate(levels)}
    users[-1] = pool[len(levels) * args.requests : len(levels) * args.requests + 4]
    serve_flags = shlex.split(args.serve_flags)
    rows = (
        bench_vllm(run_dir, cat, users, workloads, args.k, args.dtype, serve_flags) if workloads != ["hf beam"] else []
    )
    if "hf beam" in workloads:
        rows += bench_hf(cat, users, args.k, args.dtype)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads",
        "load_average_at_end": os.getloadavg(),
        "model": str(cat.model_dir),
        "dtype": args.dtype,
        "k": args.k,
        "num_beams": args.k,
        "requests_per_row": args.requests,
        "serve_flags": serve_flags,
        "rows": rows,
        "ratios": ratios(rows),
    }
    print(f"\ntop-{args.k} recommendation, {args.requests} requests per row, {report['machine']}, {args.dtype}")
    print(format_table(rows))
    print(json.dumps(report["ratios"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main()
