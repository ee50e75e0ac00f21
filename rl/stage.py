"""Stages `pscore` (train the reward model) and `rl` (ECPO on top of the SFT model).

The loop is our own rather than TRL's GRPOTrainer: each rollout is one item from the SID trie
(the top beams of a constrained beam search, or constrained samples, the user's seen items
excluded), the format reward needs free samples of the same prompts, and ECPO's early clip keeps
the gradient of a capped ratio, which TRL's two-sided clipping (a clamp) does not.

Three disjoint user sets: RL trains on the first `rl_users` (targets from their train parts only;
with `rl_target valid`, their valid item, which SFT never trained on, as fresh logs would be),
the report tests on the next `rl_eval_users`, and the checkpoint is chosen on the valid split of
the last `rl_select_users`. Step 0 of that choice is the SFT model itself, so a run that only made
things worse is recorded as such and not served (rl/served.py). With `reasoning`, the rollouts write
a rationale first (rl/reasoning.py), the choice asks reasoning-first, and the run is recorded under
`valid_reasoning`, out of the served choice.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tqdm import tqdm

from backbone.llm import load_causal_lm
from model.plot import plot_loss
from model.train import trained_model_dir
from rl.loop import Policy, ecpo_step
from rl.pscore import PScore, feedback_heads, train_pscore, user_scores
from rl.reasoning import reasoning_step
from rl.rewards import business_rule, preference_reward
from rl.select import split_examples, topk_metrics
from rl.served import GATE, METRIC, record_served
from thinkrec.config import PScoreConfig, RLConfig
from thinkrec.data import Dataset, load_prepared
from thinkrec.data.stage import load_run_schema
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import MODEL_SID_FILE, TokenTrie
from tokenizer_ext.stage import load_index


def item_features(run: RunDir) -> np.ndarray:
    run.require("tokenize", "tokenize")
    return np.load(run.path / "tokenizer" / "item_embeddings.npy")


def run_pscore(cfg: PScoreConfig, run: RunDir) -> dict:
    ds = load_prepared(run)
    schema = load_run_schema(run)
    feedback = schema["interactions"]["feedback"] if schema else None
    scorer, report = train_pscore(ds, item_features(run), cfg, feedback_heads(feedback, ds.verb[1]))
    out = run.sub("pscore")
    scorer.save(out, cfg)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    # every user's score for every item from their train part: sft-data reads it (no rl import)
    np.save(out / "user_scores.npy", user_scores(scorer, [u.train_items() for u in ds.users], len(ds.items)))
    files = {"model": "pscore/pscore.pt", "report": "pscore/report.json", "user_scores": "pscore/user_scores.npy"}
    run.record("pscore", cfg, files, report=report)
    return report


def load_pscore(run: RunDir) -> PScore:
    run.require("pscore", "pscore")
    return PScore.load(run.path / "pscore", item_features(run))


def flagged_items(ds: Dataset, spec: str, schema: dict | None) -> set[int]:
    """The business rule's item class. `spec`: attribute=value, or attribute>number for a numeric
    attribute; "" = the data set's config (rules.flagged; none there = no rule); "none" = no rule."""
    if spec.strip().lower() == "none":
        return set()
    if not spec.strip():
        rule = ((schema or {}).get("rules") or {}).get("flagged")
        if not rule:
            return set()
        above = rule.get("above")
        spec = f"{rule['attribute']}>{above}" if above is not None else f"{rule['attribute']}={rule['value']}"
    attribute, op, value = _split_rule(spec)
    known = sorted({name for it in ds.items for name in it.attributes})
    if attribute not in known:
        raise ThinkRecError(f"flagged rule {spec!r}: no item attribute {attribute!r}; attributes are {known}")
    if op == ">":
        try:
            bound = float(value)
        except ValueError:
            raise ThinkRecError(f"flagged rule {spec!r}: {value!r} is not a number") from None
        flagged = {it.idx for it in ds.items if isinstance(it.attributes.get(attribute), int | float)
                   and it.attributes[attribute] > bound}  # fmt: skip
    else:
        flagged = {it.idx for it in ds.items if _has_value(it.attributes.get(attribute), value)}
    if not flagged:
        raise ThinkRecError(f"flagged rule {spec!r} names no item")
    return flagged


def _split_rule(spec: str) -> tuple[str, str, str]:
    if ">=" in spec or "<" in spec:
        raise ThinkRecError(f"flagged rule {spec!r}: write attribute=value or attribute>number (or none)")
    for op in ("=", ">"):
        if op in spec:
            attribute, _, value = spec.partition(op)
            return attribute.strip(), op, value.strip()
    raise ThinkRecError(f"flagged rule {spec!r}: write attribute=value or attribute>number (or none)")


def _has_value(held, value: str) -> bool:
    if isinstance(held, list | tuple | set):
        return value in {str(v) for v in held}
    return held is not None and str(held) == value


def rl_users(ds: Dataset, cfg: RLConfig) -> tuple[list[int], list[int]]:
    """User indices RL trains on (the first rl_users) and the held-out ones the report tests on
    (the next rl_eval_users). The last rl_select_users choose the checkpoint (select_users)."""
    n = len(ds.users)
    if min(cfg.rl_users, cfg.rl_eval_users, cfg.rl_select_users) < 1:
        raise ThinkRecError("rl_users, rl_eval_users and rl_select_users must be >= 1")
    if cfg.rl_users + cfg.rl_eval_users + cfg.rl_select_users > n:
        raise ThinkRecError(
            f"rl_users + rl_eval_users + rl_select_users must be <= {n}, the data set's users (the sets are disjoint)"
        )
    return list(range(cfg.rl_users)), list(range(cfg.rl_users, cfg.rl_users + cfg.rl_eval_users))


def select_users(ds: Dataset, cfg: RLConfig) -> list[int]:
    """The users whose valid split chooses the checkpoint: the last ones, apart from both other sets."""
    rl_users(ds, cfg)  # checks the sets are disjoint
    return list(range(len(ds.users) - cfg.rl_select_users, len(ds.users)))


def _check(cfg: RLConfig) -> None:
    if cfg.group_size < 2:
        raise ThinkRecError("group_size must be >= 2 (advantages are normalised within the group)")
    if cfg.rollout not in ("beam", "sample"):
        raise ThinkRecError(f"rollout must be 'beam' or 'sample', not {cfg.rollout!r}")
    if not 0 < cfg.rule_alpha <= 1 or not 0 <= cfg.rule_threshold <= 1:
        raise ThinkRecError("rule_alpha must be in (0, 1] and rule_threshold in [0, 1]")
    if cfg.epsilon <= 0 or cfg.delta <= 0:
        raise ThinkRecError("epsilon and delta must be > 0")
    if min(cfg.pscore_weight, cfg.hit_weight, cfg.rank_weight, cfg.sft_weight, cfg.format_weight) < 0:
        raise ThinkRecError("pscore_weight, hit_weight, rank_weight, sft_weight and format_weight must be >= 0")
    if cfg.rl_target not in ("train", "valid"):
        raise ThinkRecError(f"rl_target must be train or valid, not {cfg.rl_target!r}")
    if min(cfg.rl_window, cfg.rl_steps, cfg.rl_save_steps, cfg.think_tokens) < 1:
        raise ThinkRecError("rl_window, rl_steps, rl_save_steps and think_tokens must be >= 1")


def step_pairs(
    ds: Dataset, users: list[int], window: int, rng: np.random.Generator, target: str = "train"
) -> tuple[list, list]:
    """(history, real next item) per user, the target one of their newest `window` train items:
    the valid and test items are never a target nor in a history. With target "valid", the
    user's valid item after all their train items (the RL users' own; never a test item)."""
    if target == "valid":
        return split_examples(ds, users, "valid")
    histories, targets = [], []
    for u in users:
        train = ds.users[u].train_items()
        t = int(rng.integers(max(1, len(train) - window), len(train)))
        histories.append(train[:t])
        targets.append(train[t])
    return histories, targets


def _rank(row: dict, sft: dict) -> tuple:
    """A checkpoint's standing: first whether it keeps the P-Score, then NDCG, then P-Score."""
    return (row[GATE] >= sft[GATE], row[METRIC], row[GATE])


def run_rl(cfg: RLConfig, run: RunDir) -> dict:
    """ECPO from the SFT model, the SFT term trained together. Every rl_save_steps the policy is
    evaluated on the valid split of the selection users; <run>/<rl_name>/model is the best checkpoint
    (LoRA merged), and the manifest's `served` entry says which model the run serves and why."""
    _check(cfg)
    ds, index = load_prepared(run), load_index(run)
    pscore = load_pscore(run)
    flagged = flagged_items(ds, cfg.flagged, load_run_schema(run))
    reward = business_rule(preference_reward(pscore), flagged, cfg.rule_threshold, cfg.rule_alpha)
    train_users, _ = rl_users(ds, cfg)
    valid_h, valid_t = split_examples(ds, select_users(ds, cfg), "valid")
    history_len = run.history_len()
    tok, model = load_causal_lm(trained_model_dir(run, cfg.rl_init), accelerate=True)
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        model, LoraConfig(r=cfg.rl_lora_rank, lora_alpha=2 * cfg.rl_lora_rank, target_modules="all-linear")
    )
    policy = Policy(model, tok, TokenTrie(index, tok), history_len, ds, index)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.rl_learning_rate)
    out = run.sub(cfg.rl_name)
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    valid: list[dict] = []  # valid-split metrics per evaluated step; step 0 is the SFT model
    best: dict[str, dict] = {}  # "lora": the best RL checkpoint's LoRA weights so far
    start = 0
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        start, log, valid, best["lora"] = state["step"], state["log"], state["valid"], state["best"]
        print(f"resuming RL from step {start}")

    def evaluate(step: int) -> None:
        model.eval()
        args = (model, tok, policy.trie, index, ds, valid_h, valid_t, pscore, flagged, history_len)
        think = cfg.think_tokens if cfg.reasoning else 0  # the reasoning policy is asked reasoning-first
        row, _ = topk_metrics(*args, desc=f"valid, step {step}", think_tokens=think)
        valid.append({"step": step, **row})
        rl_rows = valid[1:-1]
        if step and (not rl_rows or _rank(row, valid[0]) > max(_rank(r, valid[0]) for r in rl_rows)):
            best["lora"] = _lora_state(model)

    step_fn = reasoning_step if cfg.reasoning else ecpo_step
    if start == 0:
        evaluate(0)
    for step in tqdm(range(start, cfg.rl_steps), desc="ECPO", initial=start, total=cfg.rl_steps):
        rng = np.random.default_rng([cfg.seed, step])  # per step: a resumed run draws what it would have
        torch.manual_seed(cfg.seed * 100_003 + step)
        users = rng.choice(train_users, size=min(cfg.users_per_step, len(train_users)), replace=False).tolist()
        histories, targets = step_pairs(ds, users, cfg.rl_window, rng, cfg.rl_target)
        log.append(step_fn(policy, opt, cfg, reward, histories, targets, rng, step))
        if (step + 1) % cfg.rl_save_steps == 0 or step + 1 == cfg.rl_steps:
            evaluate(step + 1)
            state = {"model": _lora_state(model), "optimizer": opt.state_dict(), "step": step + 1}
            torch.save(state | {"log": log, "valid": valid, "best": best["lora"]}, ckpt / "state.tmp")
            (ckpt / "state.tmp").replace(ckpt / "state.pt")
    chosen = max(valid[1:], key=lambda r: _rank(r, valid[0]))
    model.load_state_dict(best["lora"], strict=False)
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    index.save(out / "model" / MODEL_SID_FILE)
    (out / "log.json").write_text(json.dumps({"steps": log, "valid": valid}, indent=2))
    curve = [{"step": h["step"], "loss": h["mean_reward"]} for h in log]
    plot_loss(curve, out / "reward.png", "mean P-Score reward of the rollout groups", "ECPO")
    summary = {"steps": cfg.rl_steps, "resumed_from": start, "best_step": chosen["step"]}
    summary |= {"first_reward": log[0]["mean_reward"], "last_reward": log[-1]["mean_reward"]}
    valid_entry = {"split": "valid", "users": len(valid_h), "sft": valid[0], "model": chosen}
    if cfg.reasoning:  # measured reasoning-first: not comparable with the direct runs the served choice reads
        summary["valid_reasoning"] = valid_entry
        outputs = {"model": f"{cfg.rl_name}/model/config.json", "reasoning_log": f"{cfg.rl_name}/log.json"}
        run.record(cfg.rl_name, cfg, outputs, **summary)
        return summary
    summary["valid"] = valid_entry
    outputs = {"model": f"{cfg.rl_name}/model/config.json", "log": f"{cfg.rl_name}/log.json"}
    run.record(cfg.rl_name, cfg, outputs, **summary)
    summary["served"] = record_served(run)
    return summary


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
