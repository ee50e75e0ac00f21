"""Stage `sft-data`: build the task datasets, mix them by ratio, save to the run directory.

Named mixtures follow OneRec-Think's stages (ratios are per behaviour sample):

- `default`: behaviour, item alignment and request-following (sft_data/requests.py): the one
  model the demo trains and serves, which recommends from a history and listens to what is asked;
- `alignment` (item alignment): behaviour, SID <-> text alignment and video-QA;
- `activation` (reasoning activation): behaviour, reasoning traces, user-QA and requests, a little alignment;
- `enhancement` (reasoning enhancement): mostly reasoning traces, the ECPO stage then follows.

`--ratios task=r,...` overrides any of them. Each mixture is saved under sft_data/<name>, so a
curriculum trains one stage after another (`thinkrec train --mixture ... --init-from ...`). The
tasks are the builders registered in sft_data/tasks.py: a new task is one registered function.
"""

from __future__ import annotations

from collections import Counter

from datasets import concatenate_datasets, load_from_disk

from sft_data.builders import behaviour_samples
from sft_data.tasks import TASKS, TaskContext, build
from thinkrec.config import SFTDataConfig
from thinkrec.data import load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir, sft_data_key
from tokenizer_ext.stage import load_index

MIXTURES: dict[str, dict[str, float]] = {
    "default": {"behaviour": 1.0, "alignment": 0.3, "request": 0.3},
    "alignment": {"behaviour": 1.0, "alignment": 0.5, "video_qa": 0.5},
    "activation": {
        "behaviour": 1.0,
        "reasoning": 0.5,
        "user_qa": 0.5,
        "request": 0.5,
        "alignment": 0.1,
        "video_qa": 0.1,
    },
    "enhancement": {"behaviour": 0.3, "reasoning": 1.0, "user_qa": 0.2},
}


def mixture_ratios(cfg: SFTDataConfig) -> dict[str, float]:
    if cfg.mixture not in MIXTURES:
        raise ThinkRecError(f"unknown mixture {cfg.mixture!r}; choose from {', '.join(MIXTURES)}")
    ratios = dict(MIXTURES[cfg.mixture])
    for part in filter(None, (p.strip() for p in cfg.ratios.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in TASKS:
            raise ThinkRecError(f"ratios: unknown task {name!r}; tasks are {', '.join(TASKS)}")
        try:
            ratios[name] = float(value)
        except ValueError:
            raise ThinkRecError(f"ratios: {part!r} is not task=number") from None
        if ratios[name] < 0:
            raise ThinkRecError(f"ratios: {name} must be >= 0")
    if cfg.mixture == "default" and not cfg.ratios:
        ratios["alignment"] = cfg.alignment_ratio
    return ratios


def run_sft_data(cfg: SFTDataConfig, run: RunDir) -> dict:
    if cfg.history_len < 1 or cfg.window_stride < 1 or cfg.windows_per_user < 0 or cfg.alignment_ratio < 0:
        raise ThinkRecError("history_len and window_stride must be >= 1, windows_per_user and alignment_ratio >= 0")
    ratios = mixture_ratios(cfg)
    ds, index = load_prepared(run), load_index(run)
    behaviour = behaviour_samples(ds, index, cfg.history_len, cfg.windows_per_user, cfg.window_stride)
    n_base = len(behaviour)
    n = {task: int(round(n_base * r)) for task, r in ratios.items()}
    parts = []
    if n.get("behaviour"):
        keep = n["behaviour"] >= n_base
        parts.append(behaviour if keep else behaviour.shuffle(seed=cfg.seed).select(range(n["behaviour"])))
    ctx = TaskContext(ds, index, cfg, run)
    for task in TASKS:  # in registration order: a mixture's samples are the same whatever its ratios list first
        if task != "behaviour" and n.get(task):
            part = build(task, ctx, n[task])
            parts += [part] if part is not None else []
    if not parts:
        raise ThinkRecError(f"mixture {cfg.mixture!r} with ratios {ratios} has no samples")
    mixture = concatenate_datasets(parts).shuffle(seed=cfg.seed)
    mixture.save_to_disk(str(run.path / "sft_data" / cfg.mixture))
    counts = dict(Counter(mixture["task"]))
    run.record(
        sft_data_key(cfg.mixture),
        cfg,
        {cfg.mixture: f"sft_data/{cfg.mixture}/dataset_info.json"},
        counts=counts,
        ratios=ratios,
    )
    return counts


def load_sft_data(run: RunDir, mixture: str = "default"):
    run.require(sft_data_key(mixture), "sft-data" if mixture == "default" else f"sft-data --mixture {mixture}")
    path = run.path / "sft_data" / mixture
    if not (path / "dataset_info.json").exists():
        hint = f"run `thinkrec sft-data --mixture {mixture}`"
        raise ThinkRecError(f"run directory {run.path}: no {mixture!r} mixture; {hint}")
    return load_from_disk(str(path))
