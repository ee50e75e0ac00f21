"""The learning curve of `thinkrec train`: Recall/NDCG@K of the constrained beam search on the
valid (and optionally test) split, measured while training, against training tokens and wall time.

A transformers TrainerCallback: every `eval_every` optimizer steps (and when training ends) it
ranks the held-out items of `curve_users` users, appends a point to <sft>/curve.json and redraws
<sft>/curve.png. It keeps a copy of the weights that scored best on valid NDCG@10, so the model the
stage saves is that one (early stopping on the valid split), and stops training after
`early_stop_patience` evaluations without a gain.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import TrainerCallback

from ranking.generate import beam_recommend
from sft_data.prompts import behaviour_prompt
from thinkrec.config import TrainConfig
from thinkrec.data import Dataset, load_prepared
from thinkrec.metrics import rank_metrics
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import SIDIndex, TokenTrie
from tokenizer_ext.stage import load_index

SELECT_METRIC = "ndcg@10"  # valid metric that picks the kept model


@torch.no_grad()
def llm_rank(
    model,
    tok,
    ds: Dataset,
    index: SIDIndex,
    histories: list[list[int]],
    history_len: int,
    k: int,
    num_beams: int,
    batch_size: int,
    desc: str = "beam search",
    free: bool = False,
) -> tuple[list[list[int]], dict]:
    """Each history's top-k unseen items by constrained beam search (seen items are excluded inside
    the search). With `free`, also the unconstrained search's legality (and its ranked lists)."""
    trie = TokenTrie(index, tok)
    prompts = [behaviour_prompt(ds, index, h, history_len) for h in histories]
    seen = [{index.codes[i] for i in h} for h in histories]
    modes = (True, False) if free else (True,)
    beams = beam_recommend(
        model, tok, trie, index.lookup, prompts, num_beams, batch_size, modes=modes, desc=desc, exclude=seen
    )
    extra: dict = {}
    for mode in modes:
        out = beams[mode]
        ranked = [[i for i in found if i not in set(h)][:k] for found, h in zip(out.items, histories, strict=True)]
        extra[mode] = {"ranked": ranked, "legality": out.legal / max(1, out.total)}
    return extra[True]["ranked"], extra


class QualityCurve(TrainerCallback):
    def __init__(self, cfg: TrainConfig, run: RunDir, history_len: int, out_dir: Path):
        self.cfg, self.out_dir = cfg, out_dir
        self.ds, self.index = load_prepared(run), load_index(run)
        users = self.ds.users[: cfg.curve_users] if cfg.curve_users > 0 else self.ds.users
        self.splits = [s.strip() for s in cfg.curve_splits.split(",") if s.strip()]
        self.data = {s: ([u.history_for(s) for u in users], [u.target_for(s) for u in users]) for s in self.splits}
        self.history_len = history_len
        self.points: list[dict] = []
        self.best = -1.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_step = 0
        self.waited = 0
        self.t0 = time.time()
        self.last_step = -1
        self.average = None  # a model.averaging.WeightAverage whose weights are measured instead

    def evaluate_with(self, average) -> None:
        self.average = average

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()

    def on_step_end(self, args, state, control, **kw):
        if self.cfg.eval_every > 0 and state.global_step % self.cfg.eval_every == 0:
            self._evaluate(state, control, kw["model"], kw["processing_class"])

    def on_train_end(self, args, state, control, **kw):
        if state.global_step != self.last_step:
            self._evaluate(state, control, kw["model"], kw["processing_class"])

    def _evaluate(self, state, control, model, tok) -> None:
        self.last_step = state.global_step
        train_s = time.time() - self.t0
        was_training = model.training
        model.eval()
        point: dict = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "tokens": int(state.num_input_tokens_seen),
            "train_wall_s": round(train_s, 1),
        }
        with self.average.applied() if self.average else nullcontext():
            for split, (histories, targets) in self.data.items():
                ranked, _ = llm_rank(
                    model, tok, self.ds, self.index, histories, self.history_len, 10,
                    self.cfg.curve_beams, self.cfg.curve_batch_size, desc=f"curve {split}",
                )  # fmt: skip
                point[split] = rank_metrics(ranked, targets, [5, 10])
            score = point.get("valid", {}).get(SELECT_METRIC, -1.0)
            improved = score > self.best
            if improved and self.cfg.keep_best:  # the weights just measured (the average, if on)
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        model.train(was_training)
        self.t0 += time.time() - self.t0 - train_s  # evaluation time is not training time
        self.points.append(point)
        if improved:
            self.best, self.best_step, self.waited = score, state.global_step, 0
        else:
            self.waited += 1
            if self.cfg.early_stop_patience and self.waited >= self.cfg.early_stop_patience:
                control.should_training_stop = True
        point["best_step"] = self.best_step
        print(f"curve: {json.dumps(point)}", flush=True)
        self.save()

    def save(self) -> None:
        report = {
            "users": len(next(iter(self.data.values()))[0]) if self.data else 0,
            "splits": self.splits,
            "select_metric": f"valid {SELECT_METRIC}",
            "best_step": self.best_step,
            "points": self.points,
        }
        (self.out_dir / "curve.json").write_text(json.dumps(report, indent=2))
        plot_curve(self.points, self.out_dir / "curve.png")

    def restore_best(self, model) -> int | None:
        """Load the best-on-valid weights into `model`; the step they come from (None: nothing kept)."""
        if self.best_state is None:
            return None
        model.load_state_dict(self.best_state)
        return self.best_step


def plot_curve(points: list[dict], path: Path) -> None:
    from model.plot import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("recall@10", "ndcg@10"), strict=True):
        for split in ("valid", "test"):
            pts = [(p["tokens"] / 1e6, p[split][metric]) for p in points if split in p]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=split)
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("ThinkRec quality while training (constrained beam search)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curve_callbacks(cfg: TrainConfig, run: RunDir) -> list[QualityCurve]:
    """The callback for `thinkrec train` when the curve is switched on (eval_every > 0)."""
    if cfg.eval_every <= 0:
        return []
    return [QualityCurve(cfg, run, run.history_len(cfg.mixture), run.sub(cfg.sft_name))]
