"""Stage `reasoning-eval`: reasoning-first against direct, before and after reasoning RL.

On the RL stage's held-out users (test split), each model is asked two ways: directly (the
behaviour prompt, the SID right away) and reasoning-first (it writes its rationale, greedy, then the
constrained beam search runs after it). Rows: Recall/NDCG@K, P-Score@K, the business rule's
flagged share, legality of the constrained top-K and, reasoning-first, the share of well-formed
rationales. Models: the one reasoning RL started from (`rl_init`) and the reasoning RL model
(`rl_name`). Writes <run>/eval/reasoning_report.json.
"""

from __future__ import annotations

import datetime
import json

from backbone.llm import load_causal_lm
from model.train import trained_model_dir
from rl.select import split_examples, topk_metrics
from rl.stage import flagged_items, load_pscore, rl_users
from thinkrec.config import RLConfig
from thinkrec.data import load_prepared
from thinkrec.data.stage import load_run_schema
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import TokenTrie
from tokenizer_ext.stage import load_index

MODES = ("direct", "reasoning_first")


def run_reasoning_eval(cfg: RLConfig, run: RunDir, k: int = 10) -> dict:
    ds, index = load_prepared(run), load_index(run)
    _, held = rl_users(ds, cfg)
    pscore, flagged, history_len = (
        load_pscore(run),
        flagged_items(ds, cfg.flagged, load_run_schema(run)),
        run.history_len(),
    )
    histories, targets = split_examples(ds, held, "test")
    entry = run.manifest()["stages"].get(cfg.rl_name, {})
    if "valid_reasoning" not in entry or not (run.path / cfg.rl_name / "model" / "config.json").exists():
        raise ThinkRecError(f"no reasoning RL model named {cfg.rl_name!r}: run `thinkrec rl --reasoning` first")
    models = {cfg.rl_init: trained_model_dir(run, cfg.rl_init), cfg.rl_name: run.path / cfg.rl_name / "model"}
    rows: dict[str, dict] = {}
    for name, path in models.items():
        tok, model = load_causal_lm(path)
        model.eval()
        trie = TokenTrie(index, tok)
        args = (model, tok, trie, index, ds, histories, targets, pscore, flagged, history_len, k)
        rows[name] = {}
        for mode in MODES:
            think = cfg.think_tokens if mode == "reasoning_first" else 0
            row, beams = topk_metrics(*args, desc=f"{name}, {mode}", think_tokens=think)
            row["constrained_legality"] = beams.legal / max(1, beams.total)
            rows[name][mode] = row
    report = {
        "users": len(held),
        "split": "test",
        "k": k,
        "flagged": cfg.flagged or "the data set's rule",
        "models": rows,
    }
    report["started_from"], report["reasoning_rl"] = cfg.rl_init, cfg.rl_name
    report["rl"] = {key: entry.get(key) for key in ("steps", "best_step", "valid_reasoning")}
    report["date"] = datetime.date.today().isoformat()
    out = run.sub("eval")
    (out / "reasoning_report.json").write_text(json.dumps(report, indent=2))
    run.record("reasoning_eval", cfg, {"report": "eval/reasoning_report.json"})
    return report


def format_reasoning_table(report: dict) -> str:
    k = report["k"]
    cols = [f"recall@{k}", f"ndcg@{k}", f"pscore@{k}", f"flagged_share@{k}", "constrained_legality"]
    lines = [
        f"{report['users']} held-out users, test split, top-{k}",
        f"{'model':<14}{'asked':<17}" + "".join(f"{c:>{len(c) + 2}}" for c in cols) + "  well-formed",
    ]
    for name, modes in report["models"].items():
        for mode, m in modes.items():
            formed = f"{m['well_formed_rationale']:.3f}" if "well_formed_rationale" in m else "-"
            lines.append(f"{name:<14}{mode:<17}" + "".join(f"{m[c]:>{len(c) + 2}.4f}" for c in cols) + f"  {formed}")
    return "\n".join(lines)
