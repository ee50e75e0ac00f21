"""Stage `eval`: the trained LLM (constrained beam search) against popularity, SASRec and GRU4Rec
on the held-out split; legality with and without the constraint. Prints a table and writes
eval/metrics_<split>.json and eval/quality_<split>.json (rows per model, protocol, training
config, device, date)."""

from __future__ import annotations

import json
import os
import time

import torch

from backbone.llm import load_causal_lm
from eval.curve import llm_rank
from model.train import trained_model_dir
from seqrec.models import BASELINES, popularity_rank, sequential_rank, train_sequential
from thinkrec.config import EvalConfig
from thinkrec.data import load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.metrics import rank_metrics
from thinkrec.rundir import RunDir
from tokenizer_ext.stage import load_index

PROTOCOL = (
    "MovieLens-100K, every rating an interaction, iterated 5-core (943 users x 1,349 items x 99,287 interactions), "
    "leave-last-out (test = last item, valid = second to last, train = the rest), full ranking over the catalogue, "
    "every item the user saw before the target excluded; the test history includes the valid item"
)


def run_eval(cfg: EvalConfig, run: RunDir, model_dir: str = "") -> dict:
    if cfg.split not in ("valid", "test"):
        raise ThinkRecError(f"split must be 'valid' or 'test', not {cfg.split!r}")
    ks = cfg.k_list()
    if not ks or cfg.num_beams < max(ks):
        raise ThinkRecError(f"num_beams ({cfg.num_beams}) must be >= the largest K in {ks}")
    unknown = [b for b in _names(cfg.baselines) if b not in BASELINES]
    if unknown:
        raise ThinkRecError(f"baselines: unknown {unknown}; choose from {', '.join(BASELINES)}")
    ds = load_prepared(run)
    users = ds.users[: cfg.eval_users] if cfg.eval_users > 0 else ds.users
    histories = [u.history_for(cfg.split) for u in users]
    targets = [u.target_for(cfg.split) for u in users]
    kmax = max(ks)
    results: dict[str, dict] = {}

    # baselines see the same data the LLM was trained on: every user's sequence before the target
    before_target = [u.history_for(cfg.split) for u in ds.users]
    results["popularity"] = rank_metrics(popularity_rank(before_target, histories, kmax), targets, ks)
    valid = ([u.history_for("valid") for u in ds.users], [u.target_for("valid") for u in ds.users])
    for name in _names(cfg.baselines):
        t = time.time()
        net = BASELINES[name](len(ds.items)).to("cuda" if torch.cuda.is_available() else "cpu")
        fit = train_sequential(
            net, len(ds.items), [u.train_items() for u in ds.users], valid,
            max_epochs=cfg.baseline_epochs, patience=cfg.baseline_patience, seed=cfg.seed, desc=name,
        )  # fmt: skip
        results[name] = rank_metrics(sequential_rank(fit.model, histories, kmax), targets, ks)
        results[name].update(train_s=round(time.time() - t, 1), best_epoch=fit.best_epoch, valid=fit.valid)

    path = model_dir or trained_model_dir(run)
    results.update(llm_results(cfg, run, path))
    report = {
        "split": cfg.split,
        "users": len(users),
        "ks": ks,
        "num_beams": cfg.num_beams,
        "model": str(path),
        "results": results,
    }
    out = run.sub("eval")
    (out / f"metrics_{cfg.split}.json").write_text(json.dumps(report, indent=2))
    (out / f"quality_{cfg.split}.json").write_text(json.dumps(quality_report(report, run), indent=2))
    run.record(
        f"eval_{cfg.split}",
        cfg,
        {"metrics": f"eval/metrics_{cfg.split}.json", "quality": f"eval/quality_{cfg.split}.json"},
    )
    return report


def llm_results(cfg: EvalConfig, run: RunDir, path) -> dict[str, dict]:
    """Recall/NDCG of the model folder's constrained top-K ("thinkrec") and its free decoding
    ("thinkrec_unconstrained", with legality) on cfg.split."""
    ds, index = load_prepared(run), load_index(run)
    history_len = run.history_len()
    users = ds.users[: cfg.eval_users] if cfg.eval_users > 0 else ds.users
    histories = [u.history_for(cfg.split) for u in users]
    targets = [u.target_for(cfg.split) for u in users]
    ks = cfg.k_list()
    torch.manual_seed(cfg.seed)
    tok, model = load_causal_lm(path, accelerate=True)
    model.eval()
    t = time.time()
    _, modes = llm_rank(
        model, tok, ds, index, histories, history_len, max(ks), cfg.num_beams, cfg.eval_batch_size, free=True
    )
    seconds = time.time() - t
    results = {}
    for constrained, name in ((True, "thinkrec"), (False, "thinkrec_unconstrained")):
        results[name] = rank_metrics(modes[constrained]["ranked"], targets, ks)
        results[name]["legality"] = modes[constrained]["legality"]
    results["thinkrec"]["seconds"] = seconds
    return results


def _names(csv: str) -> list[str]:
    return [b.strip() for b in csv.split(",") if b.strip()]


def quality_report(report: dict, run: RunDir) -> dict:
    """The report in the shape of eval/results/quality_ml100k.json: metric rows per model, the
    protocol, how the LLM was trained (from the manifest) and where it ran."""
    keep = [f"{m}@{k}" for m in ("recall", "ndcg") for k in report["ks"]]
    rows = {name: {c: round(m[c], 4) for c in keep if c in m} for name, m in report["results"].items()}
    stages = run.manifest()["stages"]
    train = {
        "sft_data": stages.get("sft_data", {}).get("config", {}),
        "train": stages.get("train", {}).get("config", {}),
        "summary": stages.get("train", {}).get("summary", {}),
    }
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return {
        "split": report["split"],
        "users": report["users"],
        "rows": rows,
        "protocol": PROTOCOL,
        "train": train,
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
    }


def format_table(report: dict) -> str:
    cols = [f"{m}@{k}" for k in report["ks"] for m in ("recall", "ndcg")] + ["legality"]
    lines = [
        f"{report['split']} split, {report['users']} users, {report['num_beams']} beams",
        f"{'model':<24}" + "".join(f"{c:>11}" for c in cols),
    ]
    for name, m in report["results"].items():
        cells = "".join(f"{m[c]:>11.4f}" if c in m else f"{'-':>11}" for c in cols)
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines)
