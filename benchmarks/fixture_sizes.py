"""How small can the test suite's trained fixture be and still make its claims? Trains candidate
fixture settings (several seeds each) on a prepared MovieLens-100K run and measures what the slow
tests assert: Recall/NDCG@10 on the first 300 test users against popularity (tests/test_pipeline.py)
and, for mixtures with QA, held-out QA accuracy against the untrained model (tests/test_qa.py).

The runs go side by side (one process each), so a GPU sweeps many settings in minutes; a setting's
CPU cost is proportional to the tokens it trains on, which the table reports (padding included).

    python -m benchmarks.fixture_sizes --run-dir RUN --out eval/results/test_fixture_sizes_gpu.json
RUN has been through `thinkrec data` and `thinkrec tokenize` (model_base may be missing: it is rebuilt
from the default base model and the run's SID index).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

EVAL_USERS = 300
QA_RATIOS = "behaviour=0.1,user_qa=0.4,video_qa=0.4,alignment=0.2,reasoning=0.3,request=0"  # tests/test_qa.py's
QA_HISTORY = 6


@dataclass
class Setting:
    """A fixture candidate: sft-data and train overrides; then, optionally, the QA test's activation
    steps from its model (tests/test_qa.py), measured against the untrained model."""

    sft: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    qa_train: dict | None = None


def _lora(steps: int, lr: float, qa_steps: int | None = None, qa_lr: float = 1e-3) -> Setting:
    qa = None if qa_steps is None else {"max_steps": qa_steps, "learning_rate": qa_lr}
    return Setting(train={"max_steps": steps, "learning_rate": lr}, qa_train=qa)


SETTINGS: dict[str, Setting] = {
    "lora200_lr1e-3_qa75": _lora(200, 1e-3, 75),  # the suite's sizes before they shrank
    "lora60_lr3e-3_qa25": _lora(60, 3e-3, 25, 3e-3),
    "lora80_lr3e-3_qa30": _lora(80, 3e-3, 30, 3e-3),
    "lora50_lr4e-3_qa25": _lora(50, 4e-3, 25, 3e-3),
    "lora80_lr2e-3_qa40": _lora(80, 2e-3, 40, 2e-3),
    "lora100_lr2e-3_qa30": _lora(100, 2e-3, 30, 3e-3),
    "lora60_lr2e-3_qa40": _lora(60, 2e-3, 40, 2e-3),
    "full60_lr5e-4": Setting(train={"max_steps": 60, "lora": False, "learning_rate": 5e-4}),
    "smoke": _lora(2, 1e-3, 1),  # the script's own check
}


def rebuild_model_base(run_dir: Path) -> None:
    from backbone.llm import resolve_base_model
    from thinkrec.data import load_prepared
    from thinkrec.rundir import RunDir
    from tokenizer_ext.extend_llm import extend_llm
    from tokenizer_ext.sid import MODEL_SID_FILE, SIDIndex

    run = RunDir(run_dir)
    index = SIDIndex.load(run.path / "tokenizer" / "sid_index.json")  # load_index wants model_base already
    ds = load_prepared(run)
    extend_llm(resolve_base_model(""), index, [it.title for it in ds.items], run.path / "model_base")
    index.save(run.path / "model_base" / MODEL_SID_FILE)


def one(run_dir: Path, name: str, seed: int, work: Path, eval_users: int = EVAL_USERS) -> dict:
    """One setting and seed in a copy of the prepared run."""
    from eval.qa import run_qa_eval
    from eval.stage import run_eval
    from model.train import run_train
    from sft_data.stage import run_sft_data
    from thinkrec.config import EvalConfig, QAEvalConfig, SFTDataConfig, TrainConfig
    from thinkrec.rundir import RunDir

    setting = SETTINGS[name]
    dst = work / f"{name}_s{seed}"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for part in ("manifest.json", "data", "tokenizer", "model_base"):
        src = run_dir / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / part)
    run = RunDir(dst)
    sft = SFTDataConfig(**setting.sft)
    run_sft_data(sft, run)
    # the suite's path: fp32, unpacked, batches drawn at random
    common = {"save_steps": 10_000, "bf16": False, "packing": "off", "sampling": "random", "compile": False}
    train = TrainConfig(**common, seed=seed, **setting.train)
    t0 = time.time()
    summary = run_train(train, run)
    seconds = time.time() - t0
    history = json.loads((dst / "sft" / "log_history.json").read_text())
    tokens = max((h.get("num_input_tokens_seen", 0) for h in history), default=0)
    report = run_eval(EvalConfig(eval_users=eval_users, baselines=""), run)
    row = {
        "setting": name,
        "seed": seed,
        "sft_data": setting.sft,
        "train": setting.train,
        "train_loss": summary["train_loss"],
        "train_seconds": round(seconds, 1),
        "tokens_seen": tokens,
        "test": {m: {k: round(v, 4) for k, v in r.items()} for m, r in report["results"].items()},
    }
    if setting.qa_train is not None:
        run_sft_data(SFTDataConfig(mixture="activation", history_len=QA_HISTORY, ratios=QA_RATIOS), run)
        qa = TrainConfig(
            **common, seed=seed, mixture="activation", sft_name="sft_qa", init_from="sft", **setting.qa_train
        )
        run_train(qa, run)
        cfg = QAEvalConfig(qa_models="base,sft_qa", qa_history_len=QA_HISTORY, qa_questions=32, qa_rec_users=16)
        row["qa_train"] = setting.qa_train
        row["qa_accuracy"] = {m: r["accuracy"] for m, r in run_qa_eval(cfg, run)["models"].items()}
    for sub in ("sft", "sft_qa"):
        shutil.rmtree(dst / sub / "checkpoints", ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/fixture_sizes"))
    p.add_argument("--settings", default=",".join(s for s in SETTINGS if s != "smoke"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--eval-users", type=int, default=EVAL_USERS)
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # NAME:SEED, run by the parent
    args = p.parse_args(argv)

    if args.one:
        name, seed = args.one.rsplit(":", 1)
        row = one(args.run_dir, name, int(seed), args.work, args.eval_users)
        (args.work / f"{name}_s{seed}.json").write_text(json.dumps(row, indent=1))
        return 0

    if not (args.run_dir / "model_base" / "config.json").exists():
        rebuild_model_base(args.run_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = [(n, s) for s in args.seeds.split(",") for n in args.settings.split(",")]
    running: list[tuple[str, subprocess.Popen]] = []
    rows = []

    def collect(done: str) -> None:
        path = args.work / f"{done}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
        args.out.write_text(json.dumps({"rows": rows}, indent=1))

    while jobs or running:
        while jobs and len(running) < args.parallel:
            n, s = jobs.pop(0)
            cmd = [sys.executable, "-m", "benchmarks.fixture_sizes", "--run-dir", str(args.run_dir),
                   "--out", str(args.out), "--work", str(args.work), "--eval-users", str(args.eval_users),
                   "--one", f"{n}:{s}"]  # fmt: skip
            log = open(args.work / f"{n}_s{s}.log", "w")  # noqa: SIM115 (closed with the process)
            running.append((f"{n}_s{s}", subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for tag, proc in list(running):
            if proc.poll() is not None:
                running.remove((tag, proc))
                print(f"{tag}: exit {proc.returncode}", flush=True)
                collect(tag)
    print(format_table(rows))
    return 0


def format_table(rows: list[dict]) -> str:
    lines = ["| setting | seed | R@10 | NDCG@10 | pop R@10 | pop NDCG@10 | tokens | train s | QA (trained vs base) |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["setting"], r["seed"])):
        t, p = r["test"]["thinkrec"], r["test"]["popularity"]
        qa = ""
        if "qa_accuracy" in r:
            b, s = r["qa_accuracy"]["base"], r["qa_accuracy"]["sft_qa"]
            qa = " ".join(f"{k}:{s[k]:.2f}/{b[k]:.2f}" for k in sorted(s))
        lines.append(
            f"| {r['setting']} | {r['seed']} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} | {p['recall@10']:.4f} | "
            f"{p['ndcg@10']:.4f} | {r['tokens_seen']} | {r['train_seconds']} | {qa} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
