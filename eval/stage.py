"""Stage `eval`: the trained LLM (constrained beam search) against popularity and SASRec on the
held-out split; legality with and without the constraint. Prints a table and writes JSON."""

from __future__ import annotations

import json
import time

import torch

from eval.baselines import popularity_rank, sasrec_rank, train_sasrec
from eval.generate import beam_recommend
from eval.metrics import rank_metrics
from model.base import load_causal_lm
from model.train import trained_model_dir
from sft_data.prompts import behaviour_prompt
from thinkrec.config import EvalConfig
from thinkrec.data import load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import TokenTrie
from tokenizer_ext.stage import load_index


def run_eval(cfg: EvalConfig, run: RunDir, model_dir: str = "") -> dict:
    if cfg.split not in ("valid", "test"):
        raise ThinkRecError(f"split must be 'valid' or 'test', not {cfg.split!r}")
    ks = cfg.k_list()
    if not ks or cfg.num_beams < max(ks):
        raise ThinkRecError(f"num_beams ({cfg.num_beams}) must be >= the largest K in {ks}")
    ds, index = load_prepared(run), load_index(run)
    sft_cfg = run.manifest()["stages"].get("sft_data", {}).get("config", {})
    history_len = int(sft_cfg.get("history_len", 10))
    users = ds.users[: cfg.eval_users] if cfg.eval_users > 0 else ds.users
    histories = [u.history_for(cfg.split) for u in users]
    targets = [u.target_for(cfg.split) for u in users]
    kmax = max(ks)
    results: dict[str, dict] = {}

    # baselines see the same data the LLM was trained on: every user's sequence before the target
    before_target = [u.history_for(cfg.split) for u in ds.users]
    results["popularity"] = rank_metrics(popularity_rank(before_target, histories, kmax), targets, ks)
    t = time.time()
    sasrec = train_sasrec(len(ds.items), [u.train_items() for u in ds.users], cfg.sasrec_epochs, cfg.seed)
    results["sasrec"] = rank_metrics(sasrec_rank(sasrec, histories, kmax), targets, ks)
    results["sasrec"]["train_s"] = time.time() - t

    path = model_dir or trained_model_dir(run)
    torch.manual_seed(cfg.seed)
    tok, model = load_causal_lm(path)
    model.eval()
    trie = TokenTrie(index, tok)
    prompts = [behaviour_prompt(ds, index, h, history_len) for h in histories]
    t = time.time()
    seen = [{index.codes[i] for i in h} for h in histories]  # like the baselines, never re-recommend
    beams = beam_recommend(model, tok, trie, index.lookup, prompts, cfg.num_beams, cfg.eval_batch_size, exclude=seen)
    seconds = time.time() - t
    for constrained, name in ((True, "thinkrec"), (False, "thinkrec_unconstrained")):
        out = beams[constrained]
        ranked = [[i for i in found if i not in set(h)][:kmax] for found, h in zip(out.items, histories, strict=True)]
        results[name] = rank_metrics(ranked, targets, ks)
        results[name]["legality"] = out.legal / max(1, out.total)
    results["thinkrec"]["seconds"] = seconds
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
    run.record(f"eval_{cfg.split}", cfg, {"metrics": f"eval/metrics_{cfg.split}.json"})
    return report


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
