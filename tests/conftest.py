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
