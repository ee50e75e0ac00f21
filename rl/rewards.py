"""The reward system of the OneRec report (Sec. 2.4), each part a small function with its config
in RLConfig, so a deployment can swap one without touching the loop:

  - preference: the P-Score of (user history, item);
  - business rule (Specific Industrial Reward): once the flagged class's share of a group passes
    the threshold f, the reward of its items is multiplied by alpha in (0, 1];
  - hit and rank (MiniOneRec's rule and ranking rewards): the sample that is the user's real next
    item earns 1; when the group holds it, every wrong item is penalised, the more the higher its
    beam rank, so the update moves the real item up the list users get. The P-Score alone has no
    tie to what the user did next, and optimised alone it drifts the top-K away from it;
  - format: a legal SID gets advantage 1, an illegal one is dropped (advantage 0); K of the legal
    samples are chosen at random (the report found random selection beats top-k) for the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rl.pscore import PScore

RewardFn = Callable[[list[int], list[int]], np.ndarray]  # (history, group of items) -> rewards


def preference_reward(pscore: PScore) -> RewardFn:
    def reward(history: list[int], items: list[int]) -> np.ndarray:
        return np.asarray(pscore.score([history] * len(items), items), dtype=np.float64)

    return reward


def business_rule(base: RewardFn, flagged: set[int], threshold: float, alpha: float) -> RewardFn:
    """Damp the flagged class by alpha once its share of the group passes `threshold`."""

    def reward(history: list[int], items: list[int]) -> np.ndarray:
        r = base(history, items)
        is_flagged = np.array([i in flagged for i in items])
        if alpha < 1.0 and len(items) and is_flagged.mean() > threshold:
            r = np.where(is_flagged, alpha * r, r)
        return r

    return reward


def hit_rank_reward(items: list[int | None], target: int, rank_weight: float) -> np.ndarray:
    """1 for the real next item; if the group holds it, wrong item i (in beam order) gets
    -rank_weight * w_i / sum(w), w_i = 1 / log2(i + 2) (the NDCG discount). A group without the
    real item gets zeros: nothing to tell its items apart by."""
    hit = np.array([i == target for i in items], dtype=np.float64)
    if not hit.any():
        return hit
    discount = 1.0 / np.log2(np.arange(len(items)) + 2.0)
    return np.where(hit > 0, 1.0, -rank_weight * discount / discount.sum())


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """A_i = (r_i - mean) / std within the group; all-equal rewards give zero advantages."""
    std = rewards.std()
    return (rewards - rewards.mean()) / std if std > 1e-8 else np.zeros_like(rewards)


def format_selection(legal: list[bool], k: int, rng: np.random.Generator) -> list[int]:
    """Indices of K legal samples picked at random (advantage 1); illegal ones are dropped."""
    ok = [i for i, is_legal in enumerate(legal) if is_legal]
    if len(ok) <= k:
        return ok
    return sorted(rng.choice(ok, size=k, replace=False).tolist())
