"""Stage `sft-data`: build the task datasets, mix them by ratio, save to the run directory."""

from __future__ import annotations

from collections import Counter

from datasets import concatenate_datasets, load_from_disk

from sft_data.builders import alignment_samples, behaviour_samples
from thinkrec.config import SFTDataConfig
from thinkrec.data import load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.stage import load_index


def run_sft_data(cfg: SFTDataConfig, run: RunDir) -> dict:
    if cfg.history_len < 1 or cfg.windows_per_user < 1 or cfg.alignment_ratio < 0:
        raise ThinkRecError("history_len and windows_per_user must be >= 1 and alignment_ratio >= 0")
    ds, index = load_prepared(run), load_index(run)
    behaviour = behaviour_samples(ds, index, cfg.history_len, cfg.windows_per_user)
    parts = [behaviour]
    n_align = int(round(len(behaviour) * cfg.alignment_ratio))
    if n_align:
        parts.append(alignment_samples(ds, index, n_align, cfg.seed))
    mixture = concatenate_datasets(parts).shuffle(seed=cfg.seed)
    mixture.save_to_disk(str(run.path / "sft_data" / "train"))
    counts = dict(Counter(mixture["task"]))
    run.record("sft_data", cfg, {"train": "sft_data/train/dataset_info.json"}, counts=counts)
    return counts


def load_sft_data(run: RunDir):
    run.require("sft_data", "sft-data")
    return load_from_disk(str(run.path / "sft_data" / "train"))
