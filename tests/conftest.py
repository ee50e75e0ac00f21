"""Shared fixtures. The prepared run directories are session-scoped: building them is the
expensive part, and several tests read the same one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinkrec.config import DataConfig
from thinkrec.data import Dataset, load_dataset


@pytest.fixture(scope="session")
def ml100k() -> Dataset:
    return load_dataset(DataConfig())


@pytest.fixture(scope="session")
def tokenized_run(tmp_path_factory):
    """A run directory through `data` and `tokenize` on the full MovieLens-100K catalogue, with the
    best recipe's collaborative-first SIDs (--collab-weight 2): the fixture learns faster on them."""
    from thinkrec.config import ModelConfig, TokenizerConfig
    from thinkrec.data import prepare
    from thinkrec.rundir import RunDir
    from tokenizer_ext.stage import run_tokenize

    run = RunDir(tmp_path_factory.mktemp("run"))
    prepare(DataConfig(), run)
    report = run_tokenize(TokenizerConfig(collab_weight=2.0), ModelConfig(), run)
    return run, report


@pytest.fixture(scope="session")
def data(tokenized_run):
    """The tokenized run's data set and SID index."""
    from thinkrec.data import load_prepared
    from tokenizer_ext.stage import load_index

    run, _ = tokenized_run
    return load_prepared(run), load_index(run)


# The size CI trains at. Beating popularity on the held-out test items takes about 200 LoRA steps
# (every seed of eval/results/test_fixture_sizes_gpu.json's sweeps; 23 minutes on 2 AVX2 cores), which
# CI cannot afford beside everything else; 100 steps at twice the rate reach 0.96-1.27x popularity's
# Recall@10 and 1.0-1.28x its NDCG@10 over three seeds, so tests/test_pipeline.py asserts 0.8x here and
# the full claim is measured by benchmarks/fixture_sizes.py. Batches are drawn at random, as on a GPU:
# batches grouped by length hold one task each and learn far less a step.
TEST_TRAIN_STEPS = 100
TEST_LEARNING_RATE = 2e-3
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
    cfg = TrainConfig(
        max_steps=TEST_TRAIN_STEPS,
        learning_rate=TEST_LEARNING_RATE,
        save_steps=TEST_TRAIN_STEPS // 2,
        cpu_bf16=True,
        sampling="random",
    )
    summary = run_train(cfg, run)
    return run, summary


# --- the suite's time budget -------------------------------------------------------------------------
# Each test module's share of a full run's time (setup, call and teardown of its tests; a shared
# fixture counts where it is first built) is held to tests/time_budget.json, so the next slow test
# fails the suite here instead of pushing CI past its limit. Shares, not seconds: they hold across
# machines. Only a run of the whole suite is checked; `pytest -m "not slow"` and single files are not.
BUDGET_FILE = Path(__file__).with_name("time_budget.json")
_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    module = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    _seconds[module] = _seconds.get(module, 0.0) + report.duration


def over_budget(seconds: dict[str, float], budget: dict) -> list[str]:
    """Modules whose share of the run is past their budgeted share (with the file's slack), and
    modules that have no budget yet."""
    total = sum(seconds.values()) or 1.0
    shares = budget["modules"]
    problems = [f"{m} has no entry in {BUDGET_FILE.name}" for m in sorted(seconds) if m not in shares]
    for module, secs in sorted(seconds.items()):
        allowed = shares.get(module)
        if allowed is not None and secs / total > allowed * budget["slack"] + budget["noise"]:
            problems.append(f"{module} took {secs / total:.1%} of the run ({secs:.0f} s); its budget is {allowed:.1%}")
    return problems


def pytest_sessionfinish(session, exitstatus) -> None:
    opt = session.config.option
    budget = json.loads(BUDGET_FILE.read_text())
    # a whole run: no selection, every budgeted module ran, nothing failed or was interrupted
    whole = not opt.markexpr and not opt.keyword and set(budget["modules"]) <= set(_seconds)
    if not whole or exitstatus != 0 or session.testsfailed:
        return
    total = sum(_seconds.values())
    lines = [f"time per test module (whole run {total / 60:.1f} min):"]
    for module, secs in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        share = budget["modules"].get(module)
        shown = "none" if share is None else f"{share:.1%}"
        lines.append(f"  {module:32s} {secs:7.1f} s  {secs / total:6.1%}  budget {shown}")
    problems = over_budget(_seconds, budget)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines + [f"OVER BUDGET: {p}" for p in problems]:
        reporter.write_line(line) if reporter else print(line)
    if problems and budget["measured"] != "estimate":  # an estimate only warns until a run has measured it
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
