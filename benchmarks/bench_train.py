"""Training throughput of `thinkrec train`'s own step: tokens/s and model FLOPs utilisation (MFU).

    python -m benchmarks.bench_train --data runs/gpu_bench --out eval/results/train_real_h100.json

It times the Trainer that `run_train` builds (model.train.build_trainer: the same encoding of the
SFT mixture, collator, answer-only loss, optimizer, bf16, packing, compiled layers, loader
workers) on real SFT data, for models of a given shape with random weights (MFU does not depend on
weight values, and a GPU host need not carry weights). `--data` is a folder made by
`--prepare RUN_DIR[,RUN_DIR...]` from run directories (one per history length, see `thinkrec
sft-data --history-len`): model/ (tokenizer, model config, SID index: no weights) and h<N>/
(the default mixture built with history_len N), a few MB.

Rows: each size of --sizes, full fine-tune, the first history length; then, at the first size,
the other history lengths, LoRA (the CLI default) and, with --padded, the path `thinkrec train`
took before packing (LoRA, left-padded batches of 8, no compile). Each row: --warmup steps
(compilation happens there), then --steps timed ones.

MFU = model FLOPs per second / the device's peak dense bf16 FLOPs. Model FLOPs count what the
step needs, on real tokens only (no padding, no filler): 6 x non-embedding parameters per token
(4 x for frozen LoRA base weights, which get no weight gradient, plus 6 x the adapters'), the LM
head (vocabulary x hidden) on the labelled positions only (6 x, or 4 x when frozen), and attention
as 12 x layers x hidden x sample length per token (PaLM's appendix B, non-causal count).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

SHAPES = {  # (hidden, intermediate, layers, heads, kv_heads); the rest of the config is the run's model
    "tiny": (64, 128, 2, 4, 2),  # CPU smoke runs only
    "135m": (576, 1536, 30, 9, 3),  # SmolLM2-135M, the run's own shape
    "360m": (960, 2560, 32, 15, 5),  # SmolLM2-360M
    "1b": (2048, 8192, 16, 32, 8),  # ~1.1B with embeddings
}
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense; SXM unless named
MAX_LENGTH = {10: 384}  # the CLI default for the default history; longer histories get longer rows


def max_length_for(history: int) -> int:
    return MAX_LENGTH.get(history, 384 + 64 * ((history - 10 + 7) // 8))


@dataclass
class Row:
    size: str
    history: int
    lora: bool = False
    packing: bool = True  # packed rows (else the left-padded path)
    compile: bool = True
    batch_size: int = 8  # samples per batch when not packed
    batch_tokens: int = 0  # 0 = the automatic choice
    extra: dict = field(default_factory=dict)
    tried_tokens: int = 0  # what the last attempt used


class StatsCollator:
    """Wraps the trainer's collator: adds the real token count, labelled positions and the sum of
    squared sample lengths of each batch (what MFU counts), read from the rows before collation."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, items: list) -> dict:
        rows = [r for item in items for r in (item if isinstance(item, list) else [item])]
        lengths = [len(r["input_ids"]) for r in rows]
        labelled = sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows)
        batch = self.inner(items)
        batch["stats"] = {
            "tokens": sum(lengths),
            "sq": sum(n * n for n in lengths),
            "labelled": labelled,
            "n": len(rows),
        }
        return batch


def prepare(run_dirs: list[str], out: Path) -> None:
    """Copy from run directories what the benchmark reads: tokenizer, model config and SID index
    (no weights), and each run's default mixture under h<history_len>."""
    from datasets import load_from_disk

    out.mkdir(parents=True, exist_ok=True)
    for i, rd in enumerate(run_dirs):
        rd = Path(rd)
        manifest = json.loads((rd / "manifest.json").read_text())
        history = manifest["stages"]["sft_data"]["config"]["history_len"]
        if i == 0:
            (out / "model").mkdir(exist_ok=True)
            for f in (rd / "model_base").iterdir():
                if f.suffix != ".safetensors" and f.is_file():
                    shutil.copy(f, out / "model" / f.name)
        target = out / f"h{history}"
        if target.exists():
            shutil.rmtree(target)
        load_from_disk(str(rd / "sft_data" / "default")).save_to_disk(str(target))
        print(f"prepared {target}")


def build_model(size: str, base_config, device: str):
    from transformers import AutoModelForCausalLM

    cfg = base_config.__class__.from_dict(base_config.to_dict())
    if size != "135m":
        hidden, inter, layers, heads, kv = SHAPES[size]
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = hidden, inter, layers
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = heads, kv, hidden // heads
    with torch.device(device):  # initialised where it trains: fast for 1B parameters
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")


def model_flops(model, stats: dict, lora: bool) -> float:
    """Model FLOPs of the measured steps (see the module docstring)."""
    from model.fastpath import base_model, text_config

    c = text_config(base_model(model))
    head = c.vocab_size * c.hidden_size
    base_params = [p for n, p in base_model(model).named_parameters() if "lora_" not in n]
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    body = sum(p.numel() for p in base_params) - head * (1 if c.tie_word_embeddings else 2)
    factor = 4 if lora else 6
    attention = 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * stats["sq"]
    return (
        factor * body * stats["tokens"] + 6 * adapters * stats["tokens"] + factor * head * stats["labelled"] + attention
    )


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench_row(row: Row, data: Path, tok, base_config, index, encoded_cache: dict, warmup: int, steps: int) -> dict:
    from transformers import TrainerCallback
    from transformers.trainer_utils import SaveStrategy

    from model.train import _wrap_lora, build_trainer, encode_sft
    from thinkrec.config import TrainConfig
    from tokenizer_ext.sid import sid_tokens

    cuda = torch.cuda.is_available()
    cfg = TrainConfig(
        lora=row.lora,
        max_steps=warmup + steps,
        save_steps=10**9,
        logging_steps=10**9,
        max_length=max_length_for(row.history),
        packing="on" if row.packing else "off",
        compile=row.compile,
        batch_size=row.batch_size,
        batch_tokens=row.batch_tokens,
        resume=False,
    )
    key = (row.history, cfg.max_length)
    if key not in encoded_cache:
        from datasets import load_from_disk

        vocab = tok.get_vocab()
        code_ids = {vocab[t] for t in sid_tokens(index.levels, index.codebook_size) if t.startswith("<s_")}
        encoded_cache[key] = encode_sft(
            load_from_disk(str(data / f"h{row.history}"), keep_in_memory=True), tok, cfg, code_ids
        )
    encoded = encoded_cache[key]
    torch.manual_seed(0)
    model = build_model(row.size, base_config, "cuda" if cuda else "cpu")
    if row.lora:
        model = _wrap_lora(model, tok, cfg, sid_tokens(index.levels, index.codebook_size))
    out_dir = Path("/tmp/thinkrec_bench_ckpt")
    trainer, speed = build_trainer(cfg, model, tok, encoded, out_dir)
    row.tried_tokens = speed.batch_tokens
    trainer.args.save_strategy = SaveStrategy.NO  # a benchmark keeps no checkpoint
    trainer.data_collator = StatsCollator(trainer.data_collator)
    measured: list[dict] = []
    inner_loss = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        stats = inputs.pop("stats")
        if trainer.state.global_step >= warmup:  # train() makes a new state: read it at each call
            measured.append(stats)
        return inner_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warmup, warmup + steps):
                if cuda:
                    torch.cuda.synchronize()
                clock[str(state.global_step)] = time.perf_counter()
                if state.global_step == warmup and cuda:
                    torch.cuda.reset_peak_memory_stats()

    trainer.add_callback(Clock())
    trainer.train()
    elapsed = clock[str(warmup + steps)] - clock[str(warmup)]
    stats = {k: sum(s[k] for s in measured) for k in ("tokens", "sq", "labelled", "n")}
    flops = model_flops(model, stats, row.lora)
    peak = peak_flops()
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    result = {
        "size": row.size,
        "params_m": round(params / 1e6, 1),
        "seq_len": round(stats["tokens"] / stats["n"], 1),  # mean sample length (tokens)
        "batch": round(stats["n"] / steps, 1),  # samples per step
        "tokens_per_s": round(stats["tokens"] / elapsed),
        "mfu": round(flops / elapsed / peak, 4) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "config": {
            "history_len": row.history,
            "max_length": cfg.max_length,
            "finetune": "lora" if row.lora else "full",
            "packing": speed.packing,
            "batch_tokens": speed.batch_tokens,
            "attention": speed.attention or speed.original_attention,
            "compiled": speed.compile,
            "bf16": speed.bf16,
            "loader_workers": speed.workers,
            "step_s": round(elapsed / steps, 4),
            "tflops": round(flops / elapsed / 1e12, 1),
            "labelled_share": round(stats["labelled"] / stats["tokens"], 3),
            "filler_share": round(1 - stats["tokens"] / (steps * speed.batch_tokens), 4) if speed.batch_tokens else 0,
            "warmup_steps": warmup,
            "timed_steps": steps,
            **row.extra,
        },
    }
    return result


def rows_for(args) -> list[Row]:
    sizes = args.sizes.split(",")
    histories = [int(h) for h in args.histories.split(",")]
    first, h0 = sizes[0], histories[0]
    rows = [Row(s, h0, batch_tokens=args.batch_tokens) for s in sizes]
    rows += [Row(first, h, batch_tokens=args.batch_tokens) for h in histories[1:]]
    if args.lora:
        rows.append(Row(first, h0, lora=True, batch_tokens=args.batch_tokens))
    if args.padded:
        rows.append(Row(first, h0, lora=True, packing=False, compile=False, extra={"path": "before packing"}))
    return rows


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="runs/gpu_bench", help="folder made by --prepare")
    p.add_argument("--prepare", default="", help="RUN_DIR[,RUN_DIR...]: build --data from these run directories")
    p.add_argument("--sizes", default="135m,360m,1b", help=f"model shapes: {', '.join(SHAPES)}")
    p.add_argument("--histories", default="10,50", help="history lengths (h<N> folders in --data)")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help="a LoRA row at the first size")
    p.add_argument("--padded", action=argparse.BooleanOptionalAction, default=True, help="the pre-packing path's row")
    p.add_argument("--batch-tokens", type=int, default=0, help="tokens per packed row; 0 = automatic")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default="eval/results/train_real_h100.json")
    args = p.parse_args(argv)
    data = Path(args.data)
    if args.prepare:
        prepare(args.prepare.split(","), data)
        return []
    from transformers import AutoConfig, AutoTokenizer

    from tokenizer_ext.sid import MODEL_SID_FILE, SIDIndex

    tok = AutoTokenizer.from_pretrained(data / "model")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    base_config = AutoConfig.from_pretrained(data / "model")
    index = SIDIndex.load(data / "model" / MODEL_SID_FILE)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import transformers

    report = {"results": [], "device": device, "torch": torch.__version__, "transformers": transformers.__version__}
    report["date"] = time.strftime("%Y-%m-%d")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoded: dict = {}
    for row in rows_for(args):
        t = time.time()
        for attempt in range(3):  # on out-of-memory, half the tokens per row
            oom = False
            try:
                result = bench_row(row, data, tok, base_config, index, encoded, args.warmup, args.steps)
            except torch.OutOfMemoryError:
                result, oom = {"size": row.size, "error": f"out of memory at batch_tokens={row.tried_tokens}"}, True
            except Exception as e:  # noqa: BLE001  (one row's failure must not lose the others)
                result = {
                    "size": row.size,
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc()[-3000:],
                }
            if not oom or row.tried_tokens <= 4096:
                break
            _free()  # outside the except block: its traceback holds the failed step's tensors
            row.batch_tokens = row.tried_tokens // 2
            row.extra["oom_retries"] = attempt + 1
        result.setdefault("config", {})["wall_s"] = round(time.time() - t, 1)
        report["results"].append(result)
        out.write_text(json.dumps(report, indent=2))  # after every row: a cut-off run keeps what it measured
        print(json.dumps(result), flush=True)
        _free()
    print(format_table(report))
    print(f"written: {out}")
    return report["results"]


def format_table(report: dict) -> str:
    lines = [f"`thinkrec train` step on {report['device']}, torch {report['torch']}, {report['date']}"]
    lines.append("| model | params | history | fine-tune | path | tokens/step | tokens/s | MFU | peak GiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['size']} | error: {r['error'][:80]} |")
            continue
        c = r["config"]
        path = f"packed, {c['attention']}" + (", compiled" if c["compiled"] else "") if c["packing"] else "padded"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        tokens = c["batch_tokens"] or f"{r['batch']:.0f} samples"
        lines.append(
            f"| {r['size']} | {r['params_m']:.0f}M | {c['history_len']} | {c['finetune']} | {path} | {tokens} "
            f"| {r['tokens_per_s']:,} | {mfu} | {r['peak_mem_gib']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
