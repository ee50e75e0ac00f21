"""The reward system of the OneRec report (Sec. 2.4), each part a small function with its config
in RLConfig, so a deployment can swap one without touching the loop:

  - preference: the P-Score of (user history, item);
  - business rule (Specific Industrial Reward): once the flagged class's share of a group passes
    the threshold f, the reward of its items is multiplied by alpha in (0, 1];
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
