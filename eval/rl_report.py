"""Before and after RL, on users RL never trained on: Recall/NDCG of the top-K (constrained beam
search, test split), the mean P-Score of those K items and of sampled groups (the RL reward),
the share of the business rule's flagged class among the top-K, and how often free (unconstrained)
samples spell a catalogue item. One row per model: the SFT model and every RL run in the run dir,
each RL row with the valid-split metrics its checkpoint was chosen by; `served` is the run's
recorded choice of model (rl/served.py).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from backbone.llm import load_causal_lm
from model.train import trained_model_dir
from ranking.generate import trie_sample
from rl.select import split_examples, topk_metrics
from rl.served import SERVED, started_from
from rl.stage import flagged_items, load_pscore, rl_users
from sft_data.prompts import behaviour_prompt
from thinkrec.config import RLConfig
from thinkrec.data import load_prepared
from thinkrec.data.stage import load_run_schema
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import TokenTrie
from tokenizer_ext.stage import load_index


def rl_runs(run: RunDir) -> dict[str, dict]:
    """Every finished RL stage of the run directory whose model is still there: name -> its manifest entry."""
    stages = run.manifest()["stages"].items()
    return {
        name: e
        for name, e in stages
        if e.get("outputs", {}).get("log", "").endswith("/log.json")
        and (run.path / name / "model" / "config.json").exists()
    }


def _sample(model, tok, trie, prompts, group, constrained, temperature, exclude, gen, chunk: int = 16) -> list:
    """trie_sample over chunks of prompts: its prefill keeps every position's logits, so a few
    hundred prompts at once would take many GB."""
    out = []
    for s in range(0, len(prompts), chunk):
        ex = exclude[s : s + chunk] if exclude else None
        out += trie_sample(model, tok, trie, prompts[s : s + chunk], group, constrained, temperature, ex, gen)
    return out


def run_rl_eval(cfg: RLConfig, run: RunDir, k: int = 10, group: int = 8, sample_users: int = 100) -> dict:
    """The report; the sampled reward and free legality are measured on the first `sample_users`
    held-out users only (two more prompt passes per user, and they are the secondary figures)."""
    ds, index = load_prepared(run), load_index(run)
    _, held = rl_users(ds, cfg)
    pscore = load_pscore(run)
    flagged = flagged_items(ds, cfg.flagged, load_run_schema(run))
    history_len = run.history_len()
    histories, targets = split_examples(ds, held, "test")
    prompts = [behaviour_prompt(ds, index, h, history_len) for h in histories[:sample_users]]
    exclude = [{index.codes[i] for i in h} for h in histories[:sample_users]]
    # the trained model RL started from, as recorded (`--rl-init`: `sft`, or a later curriculum stage)
    base = started_from(run) or cfg.rl_init
    models = {base: trained_model_dir(run, base)}
    rules, valid = {base: None}, {base: None}
    for name, entry in rl_runs(run).items():
        models[name] = run.path / name / "model"
        config = entry["config"]
        rules[name] = {"flagged": config.get("flagged", config.get("flagged_genre", ""))}
        rules[name] |= {k2: config[k2] for k2 in ("rule_threshold", "rule_alpha")}
        valid[name] = entry.get("valid")
    rows = {}
    for name, path in models.items():
        tok, model = load_causal_lm(path, accelerate=True)
        model.eval()
        trie = TokenTrie(index, tok)
        args = (model, tok, trie, index, ds, histories, targets, pscore, flagged, history_len, k)
        row, beams = topk_metrics(*args, desc=name)
        gen = torch.Generator(model.device).manual_seed(cfg.seed)
        sampled = _sample(model, tok, trie, prompts, group, True, cfg.temperature, exclude, gen)
        items = [[index.lookup(trie.decode_codes(c)) for c in g] for g in sampled]
        legal = beams.legal + sum(i is not None for g in items for i in g)
        row["constrained_legality"] = legal / (beams.total + sum(map(len, items)))
        pairs = zip(histories[: len(items)], items, strict=True)
        row["sampled_reward"] = float(np.mean([s for h, g in pairs for s in pscore.score([h] * len(g), g)]))
        free = _sample(model, tok, trie, prompts, group, False, cfg.temperature, None, gen)
        codes = [trie.decode_codes(c) for g in free for c in g]
        row["free_legality"] = float(np.mean([c is not None and index.lookup(c) is not None for c in codes]))
        row["rule"] = rules[name]
        row["valid"] = valid[name]
        rows[name] = row
    report = {"users": len(held), "k": k, "group": group, "sampled_users": len(prompts)}
    report |= {"flagged": cfg.flagged or "the data set's rule", "models": rows}
    report["served"] = run.manifest()["stages"].get(SERVED)
    out = run.sub("eval")
    (out / "rl_report.json").write_text(json.dumps(report, indent=2))
    run.record("rl_eval", cfg, {"report": "eval/rl_report.json"})
    return report


def format_rl_table(report: dict) -> str:
    k = report["k"]
    cols = [f"recall@{k}", f"ndcg@{k}", f"pscore@{k}", "sampled_reward", f"flagged_share@{k}"]
    cols += ["constrained_legality", "free_legality"]
    lines = [
        f"{report['users']} held-out users, top-{k}; flagged class: {report['flagged']}",
        f"{'model':<10}" + "".join(f"{c:>{len(c) + 2}}" for c in cols) + "  business rule",
    ]
    for name, m in report["models"].items():
        rule = m["rule"]
        rule_s = "-" if rule is None else f"alpha {rule['rule_alpha']} above share {rule['rule_threshold']}"
        lines.append(f"{name:<10}" + "".join(f"{m[c]:>{len(c) + 2}.4f}" for c in cols) + f"  {rule_s}")
    served = report.get("served")
    if served:
        lines.append(f"served: {served['model']} ({served['why']})")
    return "\n".join(lines)
