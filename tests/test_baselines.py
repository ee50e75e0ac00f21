"""The sequential baselines: every train transition is a training target, padded rows stay finite,
and short training on the real split already beats popularity on the valid targets (the
RecBole-level figures come from the full runs recorded in eval/results/quality_ml100k.json)."""

from __future__ import annotations

import random

import pytest
import torch

from seqrec.models import BASELINES, SASRec, popularity_rank, sequential_rank, train_sequential, training_windows
from thinkrec.metrics import rank_metrics


def test_training_windows_cover_every_transition_with_its_history():
    rng = random.Random(0)
    seqs = [[rng.randrange(100) for _ in range(rng.randint(2, 140))] for _ in range(30)]
    for stride in (1, 5, 50):
        windows = training_windows(seqs, max_len=50, stride=stride)
        assert all(2 <= len(w) <= 51 for w in windows)
        # each window is a contiguous slice ending at a sequence position: its last item is a target
        # whose full recent history (up to 50 items) is inside the window
        for s in seqs:
            ends = {tuple(s[max(0, e - 51) : e]) for e in range(2, len(s) + 1)}
            assert any(tuple(w) in ends for w in windows)
        covered = sum(len(w) - 1 for w in windows)
        assert covered >= sum(len(s) - 1 for s in seqs)  # every transition is predicted at least once


def test_sasrec_left_padded_rows_give_finite_scores():
    torch.manual_seed(0)
    model = SASRec(20, max_len=6).eval()
    seq = torch.tensor([[0, 0, 0, 0, 3, 4], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    out = model(seq)
    assert out.shape == (3, 6, 20) and torch.isfinite(out).all()


@pytest.mark.slow
def test_short_sasrec_training_beats_popularity_on_valid(ml100k):
    """Two epochs on every user's train sequence (GRU4Rec needs more to pull away from popularity;
    both reach RecBole's level in the full runs)."""
    name = "sasrec"
    ds = ml100k
    train = [u.train_items() for u in ds.users]
    histories = [u.history_for("valid") for u in ds.users]
    targets = [u.target_for("valid") for u in ds.users]
    pop = rank_metrics(popularity_rank(histories, histories, 10), targets, [10])
    fit = train_sequential(
        BASELINES[name](len(ds.items)), len(ds.items), train, (histories, targets),
        max_epochs=2, patience=1, stride=25, desc=name,
    )  # fmt: skip
    ours = rank_metrics(sequential_rank(fit.model, histories, 10), targets, [10])
    print(name, "valid", ours, "popularity", pop)
    assert ours["ndcg@10"] > pop["ndcg@10"] and ours["recall@10"] > pop["recall@10"]
    assert fit.valid["ndcg@10"] == pytest.approx(ours["ndcg@10"])  # the kept model is the best-on-valid one
