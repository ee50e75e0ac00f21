"""How small can the suite's other trained tests be and still make their claims? Sweeps, several seeds
each and side by side (one process per job):

- qa: the QA activation of tests/test_qa.py from the shared fixture's model (100 LoRA steps at 2e-3,
  as tests/conftest.py trains it), against the untrained model: the test asserts a mean lift over
  the choice tasks > 0.1, user_top_genre and item_decade lifts > 0.25, and a rationale lift > 0.3;
- image: `train-vision` on the digits picture run of tests/test_image_rec.py, then `image-eval`:
  the test asserts top-1 same class > chance + 0.15 and top-5 > max(0.6, chance);
- projector: the projector-only training of tests/test_vision.py on digit QA: the test asserts
  accuracy after >= 0.4 and > before + 0.25.

Training runs as the suite's does (fp32, unpacked, batches drawn at random), so a setting's CPU cost
is its steps x batch x tokens, and the learning per step carries over from the GPU.

    python -m benchmarks.suite_sizes --ml-run RUN --pics-run PICS --out eval/results/test_suite_sizes_gpu.json
RUN: MovieLens-100K through `data` and `tokenize --collab-weight 2`; PICS: tests/test_image_rec.py's
digits run through `data` and `tokenize` (model_base of either may be missing: it is rebuilt).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.fixture_sizes import QA_HISTORY, QA_RATIOS, rebuild_model_base

FIXTURE = {"max_steps": 100, "learning_rate": 2e-3}  # tests/conftest.py's
QA = {  # activation steps and rate from the fixture's model
    "qa75_lr1e-3": {"max_steps": 75, "learning_rate": 1e-3},  # the suite's today
    "qa40_lr2e-3": {"max_steps": 40, "learning_rate": 2e-3},
    "qa25_lr3e-3": {"max_steps": 25, "learning_rate": 3e-3},
}
IMAGE = {  # train-vision on 240 pictures
    "img80_b16_lr1e-3": {"steps": 80, "batch_size": 16, "learning_rate": 1e-3},  # the suite's today
    "img40_b16_lr2e-3": {"steps": 40, "batch_size": 16, "learning_rate": 2e-3},
    "img60_b8_lr2e-3": {"steps": 60, "batch_size": 8, "learning_rate": 2e-3},
    "img40_b8_lr2e-3": {"steps": 40, "batch_size": 8, "learning_rate": 2e-3},
    "img40_b8_lr3e-3": {"steps": 40, "batch_size": 8, "learning_rate": 3e-3},
    "img80_b16_projector": {"steps": 80, "batch_size": 16, "learning_rate": 2e-3, "train_llm": False},
}
PROJECTOR = {  # projector-only digit QA
    "proj80_b16_lr2e-3": {"steps": 80, "batch_size": 16, "lr": 2e-3},  # the suite's today
    "proj40_b16_lr4e-3": {"steps": 40, "batch_size": 16, "lr": 4e-3},
    "proj40_b8_lr4e-3": {"steps": 40, "batch_size": 8, "lr": 4e-3},
    "proj30_b8_lr5e-3": {"steps": 30, "batch_size": 8, "lr": 5e-3},
    "proj20_b8_lr5e-3": {"steps": 20, "batch_size": 8, "lr": 5e-3},
}
COMMON = {"save_steps": 10_000, "bf16": False, "packing": "off", "sampling": "random", "compile": False}


def _copy_run(src: Path, dst: Path, parts: tuple[str, ...]) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for part in parts:
        (shutil.copytree if (src / part).is_dir() else shutil.copy)(src / part, dst / part)


def qa_chain(ml_run: Path, seed: int, work: Path) -> list[dict]:
    """The fixture for one seed, then each QA setting from its model."""
    from eval.qa import run_qa_eval
    from model.train import run_train
    from sft_data.stage import run_sft_data
    from thinkrec.config import QAEvalConfig, SFTDataConfig, TrainConfig
    from thinkrec.rundir import RunDir

    dst = work / f"fixture_s{seed}"
    _copy_run(ml_run, dst, ("manifest.json", "data", "tokenizer", "model_base"))
    run = RunDir(dst)
    run_sft_data(SFTDataConfig(), run)
    run_train(TrainConfig(**COMMON, seed=seed, **FIXTURE), run)
    run_sft_data(SFTDataConfig(mixture="activation", history_len=QA_HISTORY, ratios=QA_RATIOS), run)
    rows = []
    for name, setting in QA.items():
        t0 = time.time()
        train = TrainConfig(
            **COMMON, seed=seed, mixture="activation", sft_name=f"qa_{name}", init_from="sft", **setting
        )
        run_train(train, run)
        seconds = time.time() - t0
        cfg = QAEvalConfig(
            qa_models=f"base,qa_{name}", qa_history_len=QA_HISTORY, qa_questions=32, qa_rec_users=16, seed=0
        )
        models = run_qa_eval(cfg, run)["models"]
        base, trained = models["base"]["accuracy"], models[f"qa_{name}"]["accuracy"]
        choice = [t for t in base if t != "rationale"]
        lift = {t: round(trained[t] - base[t], 3) for t in base}
        mean_lift = sum(lift[t] for t in choice) / len(choice)
        passed = (
            mean_lift > 0.1 and lift["user_top_genre"] > 0.25 and lift["item_decade"] > 0.25 and lift["rationale"] > 0.3
        )
        rows.append({"kind": "qa", "setting": name, "seed": seed, **setting, "train_seconds": round(seconds, 1),
                     "base": base, "trained": trained, "mean_lift": round(mean_lift, 3), "lift": lift,
                     "passes_test": passed})  # fmt: skip
        shutil.rmtree(dst / f"qa_{name}" / "checkpoints", ignore_errors=True)
    return rows


def image_job(pics_run: Path, name: str, seed: int, work: Path) -> dict:
    from eval.images import run_image_eval
    from model.vision_train import run_train_vision
    from thinkrec.config import VisionConfig
    from thinkrec.rundir import RunDir

    dst = work / f"{name}_s{seed}"
    _copy_run(pics_run, dst, ("manifest.json", "data", "tokenizer", "model_base"))
    run = RunDir(dst)
    t0 = time.time()
    summary = run_train_vision(VisionConfig(**IMAGE[name], seed=seed, save_steps=10_000), run)
    seconds = time.time() - t0
    r = run_image_eval(VisionConfig(image_beams=10), run)
    passed = r["top1_same_class"] > r["chance_top1_same_class"] + 0.15 and r["top5_same_class"] > max(
        0.6, r["chance_top5_same_class"]
    )
    keep = ("top1_same_class", "top5_same_class", "chance_top1_same_class", "chance_top5_same_class")
    return {"kind": "image", "setting": name, "seed": seed, **IMAGE[name], "train_seconds": round(seconds, 1),
            "last_loss": summary["last_loss"], **{k: round(r[k], 3) for k in keep}, "passes_test": passed}  # fmt: skip


def projector_job(name: str, seed: int) -> dict:
    """tests/test_vision.py's projector training, with this setting and seed."""
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    from backbone.image import FEATURE_DIM, VisionEncoder
    from backbone.llm import load_causal_lm, resolve_base_model
    from eval.qa import choice_accuracy
    from model.vision import IMAGE_TOKEN, Projector, VisionLM, add_image_token, expand_image_tokens, train_projector
    from sft_data.prompts import SYSTEM
    from sft_data.qa import Question

    setting = PROJECTOR[name]
    tok, llm = load_causal_lm(resolve_base_model(""))
    image_id = add_image_token(tok, llm)
    torch.manual_seed(seed)
    model = VisionLM(llm, Projector(FEATURE_DIM, llm.config.hidden_size), image_id)
    digits = load_digits()
    n_train, n_test = 400, 100
    pixels = (digits.images[: n_train + n_test] * (255 / 16)).astype(np.uint8)
    features = VisionEncoder(grid=2)([Image.fromarray(p).convert("RGB") for p in pixels])
    labels = digits.target[: n_train + n_test]
    prompt = expand_image_tokens(f"{IMAGE_TOKEN}\nWhich digit is written in this image?", features.shape[1])
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    qs = [
        Question("digit", messages, [str(d) for d in range(10)], int(y), f)
        for y, f in zip(labels, features, strict=True)
    ]
    if torch.cuda.is_available():
        model.cuda()
    before = choice_accuracy(model, tok, qs[n_train:])
    samples = [{"messages": q.sample()["messages"], "image_features": q.image_features} for q in qs[:n_train]]
    t0 = time.time()
    train_projector(model, tok, samples, seed=seed, bf16=False, **setting)
    seconds = time.time() - t0
    after = choice_accuracy(model.eval(), tok, qs[n_train:])
    return {"kind": "projector", "setting": name, "seed": seed, **setting, "train_seconds": round(seconds, 1),
            "before": before, "after": after, "passes_test": after >= 0.4 and after > before + 0.25}  # fmt: skip


def _shrink_to_smoke() -> None:
    """The script's own check: the first setting of each kind, two steps."""
    FIXTURE["max_steps"] = 2
    for table, key in ((QA, "max_steps"), (IMAGE, "steps"), (PROJECTOR, "steps")):
        first = next(iter(table))
        kept = {**table[first], key: 2}
        table.clear()
        table[first] = kept


def run_one(args, job: str) -> list[dict]:
    kind, name, seed = job.split(":")
    if kind == "qa":
        return qa_chain(args.ml_run, int(seed), args.work)
    if kind == "image":
        return [image_job(args.pics_run, name, int(seed), args.work)]
    return [projector_job(name, int(seed))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ml-run", type=Path)
    p.add_argument("--pics-run", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/suite_sizes"))
    p.add_argument("--kinds", default="qa,image,projector")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--settings", default="", help="comma-separated setting names to run; empty = all")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="two steps of the first setting of each kind")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # KIND:NAME:SEED, run by the parent
    args = p.parse_args(argv)
    if args.smoke:
        _shrink_to_smoke()

    if args.one:
        rows = run_one(args, args.one)
        (args.work / f"{args.one.replace(':', '_')}.json").write_text(json.dumps(rows, indent=1))
        return 0

    kinds = args.kinds.split(",")
    if args.settings:
        wanted = set(args.settings.split(","))
        for table in (QA, IMAGE, PROJECTOR):
            for name in [n for n in table if n not in wanted]:
                del table[name]
    for kind, path in (("qa", args.ml_run), ("image", args.pics_run)):
        if kind in kinds and not (path / "model_base" / "config.json").exists():
            rebuild_model_base(path)
    args.work.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds.split(",")
    jobs = [f"qa:chain:{s}" for s in seeds] if "qa" in kinds else []  # the longest first
    jobs += [f"image:{n}:{s}" for s in seeds for n in IMAGE] if "image" in kinds else []
    jobs += [f"projector:{n}:{s}" for s in seeds for n in PROJECTOR] if "projector" in kinds else []
    running: list[tuple[str, subprocess.Popen]] = []
    rows: list[dict] = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            job = jobs.pop(0)
            cmd = [sys.executable, "-m", "benchmarks.suite_sizes", "--out", str(args.out), "--work", str(args.work),
                   "--one", job]  # fmt: skip
            cmd += ["--smoke"] if args.smoke else []
            cmd += ["--ml-run", str(args.ml_run)] if args.ml_run else []
            cmd += ["--pics-run", str(args.pics_run)] if args.pics_run else []
            log = open(args.work / f"{job.replace(':', '_')}.log", "w")  # noqa: SIM115 (closed with the process)
            running.append((job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for job, proc in list(running):
            if proc.poll() is not None:
                running.remove((job, proc))
                print(f"{job}: exit {proc.returncode}", flush=True)
                path = args.work / f"{job.replace(':', '_')}.json"
                rows += json.loads(path.read_text()) if path.exists() else []
                args.out.write_text(json.dumps({"rows": rows}, indent=1))
    print(format_table(rows))
    return 0


def format_table(rows: list[dict]) -> str:
    """Per kind and setting: how many seeds pass the test's assertions, and the measured figures."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["setting"]), []).append(r)
    lines = ["| kind | setting | seeds passing | figures per seed | train s |", "|---|---|---|---|---|"]
    for (kind, name), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        if kind == "qa":
            figs = [f"mean {r['mean_lift']:+.2f} genre {r['lift']['user_top_genre']:+.2f} decade "
                    f"{r['lift']['item_decade']:+.2f} rat {r['lift']['rationale']:+.2f}" for r in rs]  # fmt: skip
        elif kind == "image":
            figs = [f"top1 {r['top1_same_class']:.2f} (chance {r['chance_top1_same_class']:.2f}) top5 "
                    f"{r['top5_same_class']:.2f}" for r in rs]  # fmt: skip
        else:
            figs = [f"{r['before']:.2f} -> {r['after']:.2f}" for r in rs]
        passing = sum(r["passes_test"] for r in rs)
        seconds = sum(r["train_seconds"] for r in rs) / len(rs)
        lines.append(f"| {kind} | {name} | {passing}/{len(rs)} | {'; '.join(figs)} | {seconds:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
