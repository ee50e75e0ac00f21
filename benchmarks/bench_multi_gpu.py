"""Multi-GPU training check: `thinkrec train`'s own run_train, alone or under `accelerate launch`,
with a timing callback. Rank 0 writes tokens/s after the compile warm-up (all ranks' tokens, from
the Trainer's count) and the loss curve, so 1-GPU, DDP and FSDP runs compare on the same data.

    python -m benchmarks.bench_multi_gpu RUN_DIR out/gpu1.json --steps 80
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 \\
        -m benchmarks.bench_multi_gpu RUN_DIR out/ddp2.json --steps 80
    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \\
        -m benchmarks.bench_multi_gpu RUN_DIR out/fsdp2.json --steps 80

RUN_DIR is a run directory through `sft-data` (model_base may hold random weights of the real
shape: throughput does not depend on weight values). Full fine-tune, the GPU defaults of
model.fastpath (packed rows, flex attention, compiled layers, bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from model.train import run_train
from thinkrec.config import TrainConfig
from thinkrec.rundir import RunDir


class StepTimer(TrainerCallback):
    def __init__(self, out: Path, warmup: int, grad_accum: int):
        self.out, self.warmup, self.grad_accum = out, warmup, grad_accum
        self.points: list[tuple[int, float, int]] = []
        self.losses: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.points.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen))

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))

    def on_train_end(self, args, state, control, **kw):
        if int(os.environ.get("RANK", "0")) != 0:
            return
        timed = [p for p in self.points if p[0] >= self.warmup]
        if len(timed) < 2:
            raise SystemExit(f"bench_multi_gpu: fewer than 2 steps after the {self.warmup}-step warm-up")
        tps = (timed[-1][2] - timed[0][2]) / (timed[-1][1] - timed[0][1])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        report = {
            "world_size": world,
            "grad_accum": self.grad_accum,
            "steps": state.global_step,
            "tokens_per_s": tps,
            "tokens_per_s_per_gpu": tps / world,
            "tokens_seen": state.num_input_tokens_seen,
            "loss": self.losses,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
        self.out.write_text(json.dumps(report, indent=1))
        print(f"{self.out}: {tps:,.0f} tokens/s, {tps / world:,.0f} per GPU", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("out", type=Path, help="JSON written by rank 0")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--warmup", type=int, default=15, help="steps left out of the timing (compilation)")
    p.add_argument("--grad-accum", type=int, default=1)
    a = p.parse_args()
    cfg = TrainConfig(
        lora=False, max_steps=a.steps, logging_steps=5, save_steps=10**6, grad_accum=a.grad_accum,
        resume=False, sft_name=a.out.stem,
    )  # fmt: skip
    run_train(cfg, RunDir(a.run_dir), [StepTimer(a.out, a.warmup, a.grad_accum)])


if __name__ == "__main__":
    main()
