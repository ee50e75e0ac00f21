"""Stage `soup`: a greedy model soup chosen on the valid split.

Each ingredient (a model folder trained from this run's tokenizer and base model, e.g. the same
recipe under other seeds) is scored on valid; then, best first, an ingredient joins the soup only
if the mean of the weights scores at least as well on valid NDCG@10 as the soup without it
(Wortsman et al., 2022). The test split is never read. Writes the soup (model/soup.py) and
eval/soup.json: each ingredient's valid scores, which were kept, and the soup's score.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from eval.stage import llm_results
from model.soup import average_models, check_ingredients
from thinkrec.config import EvalConfig, SoupConfig
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import MODEL_SID_FILE, SIDIndex
from tokenizer_ext.stage import load_index

METRIC = "ndcg@10"


def run_soup(cfg: SoupConfig, run: RunDir) -> dict:
    folders = [Path(m) for m in cfg.model_list()]
    if len(folders) < 2:
        raise ThinkRecError("--models needs at least two model folders, comma-separated")
    if len({f.resolve() for f in folders}) != len(folders):
        raise ThinkRecError("--models names a folder twice")
    check_ingredients(folders)
    if not (folders[0] / MODEL_SID_FILE).exists():
        raise ThinkRecError(f"{folders[0]} has no {MODEL_SID_FILE}: not a model that `thinkrec train` saved")
    if SIDIndex.load(folders[0] / MODEL_SID_FILE) != load_index(run):
        raise ThinkRecError(f"the models were not trained on {run.path}'s SIDs: evaluate them in their own run")
    out = Path(cfg.out) if cfg.out else run.path / "sft" / "soup"
    if cfg.num_beams < 10:
        raise ThinkRecError(f"--num-beams must be >= 10 (NDCG@10 decides), got {cfg.num_beams}")
    ev = EvalConfig(split="valid", num_beams=cfg.num_beams, eval_users=cfg.eval_users,
                    eval_batch_size=cfg.eval_batch_size, baselines="")  # fmt: skip
    t = time.time()

    def valid(path: Path) -> dict:
        return llm_results(ev, run, path)["thinkrec"]

    scores = {str(f): valid(f) for f in folders}
    order = sorted(folders, key=lambda f: -scores[str(f)][METRIC])
    if cfg.greedy:
        kept, best = [order[0]], scores[str(order[0])]
        trial = out.with_name(out.name + ".trial")
        steps = []
        for f in order[1:]:
            average_models([*kept, f], trial)
            score = valid(trial)
            keep = score[METRIC] >= best[METRIC]
            steps.append({"added": str(f), "valid": score, "kept": keep})
            if keep:
                kept, best = [*kept, f], score
        shutil.rmtree(trial, ignore_errors=True)
        average_models(kept, out)
    else:
        kept, steps = order, []
        average_models(kept, out)
        best = valid(out)
    report = {
        "split": "valid",
        "users": cfg.eval_users or "all",
        "num_beams": cfg.num_beams,
        "metric": METRIC,
        "ingredients": scores,
        "greedy_steps": steps,
        "kept": [str(f) for f in kept],
        "soup": str(out),
        "soup_valid": best,
        "best_ingredient_valid": scores[str(order[0])],
        "seconds": round(time.time() - t, 1),
    }
    (run.sub("eval") / "soup.json").write_text(json.dumps(report, indent=2))
    run.record("soup", cfg, {"model": str(out), "report": "eval/soup.json"})
    return report


def format_soup_table(report: dict) -> str:
    rows = [f"valid {METRIC} ({report['users']} users, {report['num_beams']} beams)"]
    for name, s in report["ingredients"].items():
        mark = "kept" if name in report["kept"] else "left out"
        rows.append(f"  {s[METRIC]:.4f}  R@10 {s['recall@10']:.4f}  {mark:8}  {name}")
    s = report["soup_valid"]
    rows.append(f"  {s[METRIC]:.4f}  R@10 {s['recall@10']:.4f}  soup of {len(report['kept'])} -> {report['soup']}")
    return "\n".join(rows)
