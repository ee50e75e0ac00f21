"""The SFT tasks by name: a mixture is task names with ratios (sft_data/stage.py), and a task is one
function registered here that builds `n` samples (chat `messages` plus a `task` column).

A new task is one function anywhere, registered before `sft-data` runs:

    @register_task("item_brand")
    def brand_questions(ctx: TaskContext, n: int) -> list[dict]:
        return [...]  # {"messages": [...system, user, assistant], "task": "item_brand"}

and then `thinkrec sft-data --ratios item_brand=0.2` mixes it in (ratios are per behaviour sample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset as HFDataset

from sft_data.builders import alignment_samples
from sft_data.qa import is_heldout_item, item_questions, reasoning_samples, user_questions
from sft_data.requests import request_samples
from thinkrec.config import SFTDataConfig
from thinkrec.data import Dataset
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import SIDIndex


@dataclass(frozen=True)
class TaskContext:
    """What a task builder may read: the data set, its SIDs, the sft-data config and the run."""

    ds: Dataset
    index: SIDIndex
    cfg: SFTDataConfig
    run: RunDir


TaskBuilder = Callable[[TaskContext, int], "list[dict] | HFDataset"]
# behaviour is the base every ratio is relative to (sft_data/stage.py builds it); the others in the
# order their samples join the mixture
TASKS: dict[str, TaskBuilder | None] = {"behaviour": None}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    def add(builder: TaskBuilder) -> TaskBuilder:
        if name in TASKS:
            raise ValueError(f"SFT task {name!r} is registered already")
        TASKS[name] = builder
        return builder

    return add


@register_task("alignment")
def _alignment(ctx: TaskContext, n: int):
    # the default mixture aligns every item; QA mixtures keep held-out items out of item training
    items = None if ctx.cfg.mixture == "default" else [i for i in range(len(ctx.ds.items)) if not is_heldout_item(i)]
    return alignment_samples(ctx.ds, ctx.index, n, ctx.cfg.seed, items)


@register_task("video_qa")
def _video_qa(ctx: TaskContext, n: int):
    return [q.sample() for q in item_questions(ctx.ds, ctx.index, n, heldout=False, seed=ctx.cfg.seed + 1)]


@register_task("user_qa")
def _user_qa(ctx: TaskContext, n: int):
    qs = user_questions(ctx.ds, ctx.index, n, ctx.cfg.history_len, heldout=False, seed=ctx.cfg.seed + 2)
    return [q.sample() for q in qs]


@register_task("reasoning")
def _reasoning(ctx: TaskContext, n: int):
    return reasoning_samples(ctx.ds, ctx.index, n, ctx.cfg.history_len, ctx.cfg.seed + 3)


@register_task("request")
def _request(ctx: TaskContext, n: int):
    return request_samples(
        ctx.ds, ctx.index, n, ctx.cfg.history_len, ctx.cfg.seed + 4, preference_scores(ctx.run, len(ctx.ds.items))
    )


def preference_scores(run: RunDir, n_items: int):
    """The P-Score stage's (users, items) scores when the run has them (`thinkrec pscore` before
    `sft-data`): request samples then answer counterfactual requests with the item the preference
    model ranks first; without them, with the most popular one."""
    import numpy as np

    path = run.path / "pscore" / "user_scores.npy"
    if not path.exists():
        return None
    scores = np.load(path)
    if scores.shape[1] < n_items:  # items added since (thinkrec add-items): never the preferred answer
        low = np.full((scores.shape[0], n_items - scores.shape[1]), scores.min(), dtype=scores.dtype)
        scores = np.concatenate([scores, low], axis=1)
    return scores


def build(name: str, ctx: TaskContext, n: int) -> HFDataset | None:
    """The task's n samples as a datasets.Dataset; None when the catalogue gives it none."""
    rows = TASKS[name](ctx, n)
    if isinstance(rows, HFDataset):
        return rows if len(rows) else None
    return HFDataset.from_list(rows) if rows else None
