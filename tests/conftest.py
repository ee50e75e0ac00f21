"""Shared fixtures. The prepared run directories are session-scoped: building them is the
expensive part, and several tests read the same one."""

from __future__ import annotations

import pytest

from thinkrec.config import DataConfig
from thinkrec.data import Dataset, load_dataset


@pytest.fixture(scope="session")
def ml100k() -> Dataset:
    return load_dataset(DataConfig())


@pytest.fixture(scope="session")
def tokenized_run(tmp_path_factory):
    """A run directory through `data` and `tokenize` on the full MovieLens-100K catalogue."""
    from thinkrec.config import ModelConfig, TokenizerConfig
    from thinkrec.data import prepare
    from thinkrec.rundir import RunDir
    from tokenizer_ext.stage import run_tokenize

    run = RunDir(tmp_path_factory.mktemp("run"))
    prepare(DataConfig(), run)
    report = run_tokenize(TokenizerConfig(), ModelConfig(), run)
    return run, report


@pytest.fixture(scope="session")
def data(tokenized_run):
    """The tokenized run's data set and SID index."""
    from thinkrec.data import load_prepared
    from tokenizer_ext.stage import load_index

    run, _ = tokenized_run
    return load_prepared(run), load_index(run)


# The size CI trains at: enough for the fine-tuned LLM to beat the popularity baseline on the
# held-out test items of the evaluated users (tests/test_pipeline.py), small enough for 2 cores.
# Batches are drawn at random, as on a GPU: the CPU's default groups samples of alike length, which
# saves padding but makes each batch one task, and learns far less a step (150 such steps reached
# Recall@10 0.063 against popularity's 0.087 on a 2-core AVX2 machine, 150 random ones 0.093-0.110).
TEST_TRAIN_STEPS = 200
TEST_EVAL_USERS = 300


@pytest.fixture(scope="session")
def trained_run(tokenized_run):
    """The tokenized run, through `sft-data` and `train` on the defaults, for TEST_TRAIN_STEPS steps."""
    from model.train import run_train
    from sft_data.stage import run_sft_data
    from thinkrec.config import SFTDataConfig, TrainConfig

    run, _ = tokenized_run
    run_sft_data(SFTDataConfig(), run)
    # bf16 on a CPU that has it: the suite's training in two thirds of the fp32 time
    cfg = TrainConfig(max_steps=TEST_TRAIN_STEPS, save_steps=100, cpu_bf16=True, sampling="random")
    summary = run_train(cfg, run)
    return run, summary
