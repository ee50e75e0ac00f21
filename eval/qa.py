"""Stage `qa-eval`: QA accuracy per task on held-out users and items, the rationale's accuracy, and
recommendation with and without reasoning first, for each model named. Prints a table, writes JSON.

- Multiple-choice tasks (sft_data.qa): every option is scored by the log-likelihood the model gives
  it as the answer; the best-scoring option is the model's answer. Chance is 1/4 (1/2 for Yes/No).
- Rationale: the model writes a rationale for a held-out user; it is right when the genre it names
  first is the most-watched genre of the history shown.
- Recommendation: Recall/NDCG@K of the constrained SID beam search on held-out users' test items,
  asked directly (behaviour prompt) and after the model's own rationale (reasoning prompt).
"""

from __future__ import annotations

import json
import time

import torch
from tqdm import tqdm

from backbone.llm import load_causal_lm
from eval.options import option_row, option_scores
from model.train import trained_model_dir
from ranking.generate import beam_recommend
from ranking.rationale import write_rationales
from sft_data.prompts import behaviour_prompt
from sft_data.qa import (
    ITEM_TASKS,
    USER_TASKS,
    Question,
    is_heldout_user,
    item_questions,
    rationale_correct,
    reasoning_prompt,
    user_questions,
)
from thinkrec.config import QAEvalConfig
from thinkrec.data import Dataset, load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.metrics import rank_metrics
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import SIDIndex, TokenTrie
from tokenizer_ext.stage import load_index


def choice_accuracy(model, tok, questions: list[Question], batch_size: int = 16) -> float:
    """Share of questions whose right option gets the highest answer log-likelihood, each question's
    prompt computed once for all its options (eval.options). Questions with image features need a
    model that takes them (model.vision.VisionLM)."""
    rows = [option_row(tok, q.messages, q.options, q.image_features) for q in questions]
    correct = 0
    for start in tqdm(range(0, len(rows), batch_size), desc="scoring options", leave=False):
        chunk = questions[start : start + batch_size]
        for q, scores in zip(
            chunk, option_scores(model, rows[start : start + batch_size], tok.pad_token_id), strict=True
        ):
            correct += max(range(len(q.options)), key=scores.__getitem__) == q.label  # ties: the first
    return correct / max(1, len(questions))


def evaluate_model(model, tok, ds: Dataset, index: SIDIndex, cfg: QAEvalConfig, history_len: int) -> dict:
    questions = {
        "user": user_questions(ds, index, cfg.qa_questions * len(USER_TASKS), history_len, True, cfg.seed),
        "item": item_questions(ds, index, cfg.qa_questions * len(ITEM_TASKS), True, cfg.seed),
    }
    accuracy = {}
    for task in (*USER_TASKS, *ITEM_TASKS):
        asked = [q for q in questions["user" if task in USER_TASKS else "item"] if q.task == task]
        if asked:  # a task this catalogue cannot ask (no years: no decade question) is left out
            accuracy[task] = choice_accuracy(model, tok, asked, cfg.qa_batch_size)

    users = [u for p, u in enumerate(ds.users) if is_heldout_user(p)][: cfg.qa_rec_users]
    histories = [u.history_for("test") for u in users]
    targets = [u.target_for("test") for u in users]
    reason_prompts = [reasoning_prompt(ds, index, h, history_len) for h in histories]
    rationales = write_rationales(model, tok, reason_prompts, cfg.think_tokens, cfg.qa_batch_size)
    right = [rationale_correct(ds, h[-history_len:], r) for h, r in zip(histories, rationales, strict=True)]
    accuracy["rationale"] = sum(right) / max(1, len(right))

    ks = [cfg.qa_k]
    trie = TokenTrie(index, tok)
    seen = [{index.codes[i] for i in h} for h in histories]
    rec = {}
    plain = [behaviour_prompt(ds, index, h, history_len) for h in histories]
    for name, prompts, prefixes in (
        ("direct", plain, None),
        ("reasoning_first", reason_prompts, [r + "\n" for r in rationales]),
    ):
        beams = beam_recommend(
            model, tok, trie, index.lookup, prompts, cfg.qa_k, cfg.qa_batch_size, (True,), name, seen, prefixes
        )
        rec[name] = rank_metrics(beams[True].items, targets, ks)
    return {"accuracy": accuracy, "recommendation": rec, "example_rationale": rationales[0] if rationales else ""}


def run_qa_eval(cfg: QAEvalConfig, run: RunDir) -> dict:
    if min(cfg.qa_questions, cfg.qa_rec_users, cfg.qa_k, cfg.qa_history_len) < 1:
        raise ThinkRecError("qa_questions, qa_rec_users, qa_k and qa_history_len must be >= 1")
    ds, index = load_prepared(run), load_index(run)
    history_len = cfg.qa_history_len
    report: dict = {"models": {}, "questions_per_task": cfg.qa_questions, "rec_users": cfg.qa_rec_users, "k": cfg.qa_k}
    for name in [m.strip() for m in cfg.qa_models.split(",") if m.strip()]:
        path = run.path / "model_base" if name == "base" else trained_model_dir(run, name)
        torch.manual_seed(cfg.seed)
        tok, model = load_causal_lm(path)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        t = time.time()
        report["models"][name] = evaluate_model(model, tok, ds, index, cfg, history_len)
        report["models"][name]["seconds"] = time.time() - t
    if not report["models"]:
        raise ThinkRecError("qa_models names no model (use base and/or trained sft names)")
    out = run.sub("eval")
    (out / "qa.json").write_text(json.dumps(report, indent=2))
    run.record("qa_eval", cfg, {"report": "eval/qa.json"})
    return report


def format_qa_table(report: dict) -> str:
    names = list(report["models"])
    tasks = list(next(iter(report["models"].values()))["accuracy"])
    k = report["k"]
    lines = [f"{'accuracy':<22}" + "".join(f"{n:>14}" for n in names)]
    for task in tasks:
        lines.append(f"{task:<22}" + "".join(f"{report['models'][n]['accuracy'][task]:>14.3f}" for n in names))
    for mode in ("direct", "reasoning_first"):
        for metric in (f"recall@{k}", f"ndcg@{k}"):
            label = f"{metric} {mode}"
            vals = "".join(f"{report['models'][n]['recommendation'][mode][metric]:>14.4f}" for n in names)
            lines.append(f"{label:<22}" + vals)
    lines.append(f"held-out: {report['questions_per_task']} questions per task, {report['rec_users']} users")
    return "\n".join(lines)
