"""Before and after RL, on users RL never trained on: Recall/NDCG of the top-K (constrained beam
search, test split), the mean P-Score of those K items and of sampled groups (the RL reward),
the share of the business rule's flagged class among the top-K, and how often free (unconstrained)
samples spell a catalogue item. One row per model: the SFT model and every RL run in the run dir.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from eval.generate import beam_recommend, trie_sample
from eval.metrics import rank_metrics
from model.base import load_causal_lm
from model.train import trained_model_dir
from rl.stage import flagged_items, load_pscore, rl_users
from sft_data.prompts import behaviour_prompt
from thinkrec.config import RLConfig
from thinkrec.data import load_prepared
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


def run_rl_eval(cfg: RLConfig, run: RunDir, k: int = 10, group: int = 8) -> dict:
    ds, index = load_prepared(run), load_index(run)
    _, held = rl_users(ds, cfg)
    pscore = load_pscore(run)
    flagged = flagged_items(ds, cfg.flagged_genre)
    history_len = int(run.manifest()["stages"].get("sft_data", {}).get("config", {}).get("history_len", 10))
    histories = [ds.users[u].history_for("test") for u in held]
    targets = [ds.users[u].target_for("test") for u in held]
    prompts = [behaviour_prompt(ds, index, h, history_len) for h in histories]
    exclude = [{index.codes[i] for i in h} for h in histories]
    models = {"sft": trained_model_dir(run)}
    rules = {"sft": None}
    for name, entry in rl_runs(run).items():
        models[name] = run.path / name / "model"
        rules[name] = {k2: entry["config"][k2] for k2 in ("flagged_genre", "rule_threshold", "rule_alpha")}
    rows = {}
    for name, path in models.items():
        tok, model = load_causal_lm(path)
        model.eval()
        trie = TokenTrie(index, tok)
        beams = beam_recommend(model, tok, trie, index.lookup, prompts, max(k, 20), 8, (True,), name, exclude)[True]
        top = [[i for i in found if i not in set(h)][:k] for found, h in zip(beams.items, histories, strict=True)]
        row = rank_metrics(top, targets, [k])
        flat_h = [h for h, t in zip(histories, top, strict=True) for _ in t]
        flat_i = [i for t in top for i in t]
        row[f"pscore@{k}"] = float(np.mean(pscore.score(flat_h, flat_i)))
        row[f"flagged_share@{k}"] = float(np.mean([i in flagged for i in flat_i]))
        gen = torch.Generator().manual_seed(cfg.seed)
        sampled = trie_sample(model, tok, trie, prompts, group, True, cfg.temperature, exclude, gen)
        items = [[index.lookup(trie.decode_codes(c)) for c in g] for g in sampled]
        legal = beams.legal + sum(i is not None for g in items for i in g)
        row["constrained_legality"] = legal / (beams.total + sum(map(len, items)))
        row["sampled_reward"] = float(
            np.mean([s for h, g in zip(histories, items, strict=True) for s in pscore.score([h] * len(g), g)])
        )
        free = trie_sample(model, tok, trie, prompts, group, False, cfg.temperature, None, gen)
        codes = [trie.decode_codes(c) for g in free for c in g]
        row["free_legality"] = float(np.mean([c is not None and index.lookup(c) is not None for c in codes]))
        row["rule"] = rules[name]
        rows[name] = row
    report = {"users": len(held), "k": k, "group": group, "flagged_genre": cfg.flagged_genre, "models": rows}
    out = run.sub("eval")
    (out / "rl_report.json").write_text(json.dumps(report, indent=2))
    run.record("rl_eval", cfg, {"report": "eval/rl_report.json"})
    return report


def format_rl_table(report: dict) -> str:
    k = report["k"]
    cols = [f"recall@{k}", f"ndcg@{k}", f"pscore@{k}", "sampled_reward", f"flagged_share@{k}"]
    cols += ["constrained_legality", "free_legality"]
    lines = [
        f"{report['users']} held-out users, top-{k}; flagged class: {report['flagged_genre']}",
        f"{'model':<10}" + "".join(f"{c:>{len(c) + 2}}" for c in cols) + "  business rule",
    ]
    for name, m in report["models"].items():
        rule = m["rule"]
        rule_s = "-" if rule is None else f"alpha {rule['rule_alpha']} above share {rule['rule_threshold']}"
        lines.append(f"{name:<10}" + "".join(f"{m[c]:>{len(c) + 2}.4f}" for c in cols) + f"  {rule_s}")
    return "\n".join(lines)
