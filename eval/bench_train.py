"""Training-throughput benchmark: tokens/s and model FLOPs utilisation (MFU) of the SFT step.

    python -m eval.bench_train --sizes 135m,360m,1b --seq-len 2048 --batch 8 --compile

Models are Llama-architecture decoders built from their configs (SmolLM2-135M's own shape, then
larger ones with the same tokenizer size plus the SID tokens): MFU does not depend on weight
values, and a GPU host need not carry the weights. The step is the one `thinkrec train` runs on a
GPU: bf16 autocast, fp32 master weights, fused AdamW, SDPA attention, loss on every position of
packed sequences. Prints a table and writes JSON.

MFU = model FLOPs per second / the device's peak dense bf16 FLOPs, where model FLOPs per token
= 6 * (non-embedding parameters + LM-head parameters) + 12 * layers * hidden * seq_len (attention
scores and values, forward and backward; the PaLM appendix B convention, no recomputation counted).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Llama-architecture shapes: (hidden, intermediate, layers, heads, kv_heads)
SHAPES = {
    "tiny": (128, 384, 2, 4, 2),  # for a CPU smoke run only
    "135m": (576, 1536, 30, 9, 3),  # SmolLM2-135M
    "360m": (960, 2560, 32, 15, 5),  # SmolLM2-360M
    "1b": (2048, 8192, 16, 32, 8),  # ~1.2B with embeddings
}
VOCAB = 49152 + 2 + 3 * 64  # SmolLM2 vocabulary plus SID tokens (3 levels x 64 codes)
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense, SXM


@dataclass
class Result:
    size: str
    params_m: float
    seq_len: int
    batch: int
    grad_accum: int
    compiled: bool
    step_s: float
    tokens_per_s: float
    tflops: float
    mfu: float | None
    peak_mem_gib: float | None


def build(size: str, seq_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv = SHAPES[size]
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max(seq_len, 2048),
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def flops_per_token(model, seq_len: int) -> float:
    cfg = model.config
    embed = cfg.vocab_size * cfg.hidden_size
    non_embed = sum(p.numel() for p in model.parameters()) - embed
    return 6 * (non_embed + embed) + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench(
    size: str, seq_len: int, batch: int, grad_accum: int, steps: int, warmup: int, compile_: bool, device
) -> Result:
    torch.manual_seed(0)
    model = build(size, seq_len).to(device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model) if compile_ else model
    data = torch.randint(0, VOCAB, (batch, seq_len + 1), device=device)
    inputs, labels = data[:, :-1], data[:, 1:]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        for _ in range(grad_accum):
            with autocast:
                logits = fwd(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), labels.reshape(-1))
            (loss / grad_accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - t) / steps
    tokens = batch * grad_accum * seq_len
    achieved = flops_per_token(model, seq_len) * tokens / step_s
    peak = peak_flops(device)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Result(
        size, params / 1e6, seq_len, batch, grad_accum, compile_, step_s, tokens / step_s, achieved / 1e12,
        achieved / peak if peak else None, mem,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="135m,360m,1b")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/bench/train.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for size in args.sizes.split(","):
        results.append(
            bench(size, args.seq_len, args.batch, args.grad_accum, args.steps, args.warmup, args.compile, device)
        )
        print(f"done {size}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\ntraining step on {name}, torch {torch.__version__}, seq {args.seq_len}")
    print(f"{'model':<6}{'params':>9}{'batch':>7}{'step s':>9}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'mem GiB':>9}")
    for r in results:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        mem = f"{r.peak_mem_gib:.1f}" if r.peak_mem_gib is not None else "-"
        print(
            f"{r.size:<6}{r.params_m:>8.0f}M{r.batch * r.grad_accum:>7}{r.step_s:>9.3f}{r.tokens_per_s:>11.0f}"
            f"{r.tflops:>9.1f}{mfu:>7}{mem:>9}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    report["results"] = [asdict(r) for r in results]
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return results


if __name__ == "__main__":
    main()
