"""Leave-last-out ranking metrics: one held-out target per user."""

from __future__ import annotations

import math


def rank_metrics(ranked: list[list[int]], targets: list[int], ks: list[int]) -> dict[str, float]:
    """Recall@K (= hit rate with one target) and NDCG@K averaged over users."""
    if len(ranked) != len(targets):
        raise ValueError("one ranked list per target")
    out: dict[str, float] = {}
    n = max(1, len(targets))
    for k in ks:
        hits, ndcg = 0.0, 0.0
        for items, t in zip(ranked, targets, strict=True):
            top = items[:k]
            if t in top:
                hits += 1
                ndcg += 1.0 / math.log2(top.index(t) + 2)
        out[f"recall@{k}"] = hits / n
        out[f"ndcg@{k}"] = ndcg / n
    return out


def hits_at(ranked: list[list[int]], targets: list[int], k: int) -> list[float]:
    """Per user, 1.0 if the target is in the top k (Recall@K before the mean; for paired tests)."""
    return [float(t in items[:k]) for items, t in zip(ranked, targets, strict=True)]
