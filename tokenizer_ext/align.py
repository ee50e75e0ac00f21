"""Collaborative alignment of item embeddings.

The OneRec report aligns item representations with an item-to-item contrastive loss over
co-occurring pairs. Skip-gram-style contrastive training with negative sampling converges to a
factorisation of the shifted pointwise mutual information (PMI) of those pairs (Levy & Goldberg,
2014), so the collaborative part is computed in closed form: positive PMI of items seen within a
short window of each other in users' train sequences, factorised by truncated SVD. That takes a
fraction of a second instead of minutes of SGD on two cores, and is deterministic.

The second source (`source="sasrec"`) is the item-embedding table of a SASRec trained on the same
train sequences: it learns what predicts the *next* item, in order, which is the job the SIDs serve.

The aligned vector is [content ; weight * collaborative], each half L2-normalised, so codes
quantised from it group items that are alike in content and watched together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from seqrec.models import SASRec, train_sequential
from thinkrec.errors import ThinkRecError


def cooccurring_pairs(sequences: list[list[int]], window: int = 3) -> np.ndarray:
    pairs = [(s[i], s[j]) for s in sequences for i in range(len(s)) for j in range(i + 1, min(len(s), i + 1 + window))]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def collaborative_embeddings(n_items: int, sequences: list[list[int]], dim: int = 64, window: int = 3) -> np.ndarray:
    """Rows: L2-normalised item vectors from the SVD of the positive-PMI co-occurrence matrix."""
    pairs = cooccurring_pairs(sequences, window)
    counts = np.zeros((n_items, n_items), dtype=np.float64)
    np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1.0)
    counts += counts.T  # co-occurrence is symmetric
    total = counts.sum()
    if total == 0:
        return np.zeros((n_items, dim), dtype=np.float32)
    row = counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts * total / (row @ row.T))
    ppmi = np.nan_to_num(np.maximum(pmi, 0.0), nan=0.0, posinf=0.0, neginf=0.0)
    u, s, _ = np.linalg.svd(ppmi, hermitian=True)
    dim = min(dim, n_items)
    vec = u[:, :dim] * np.sqrt(s[:dim])
    return normalise_rows(vec).astype(np.float32)


def sequential_embeddings(
    n_items: int, sequences: list[list[int]], dim: int = 64, epochs: int = 30, cache_dir: Path | None = None
) -> np.ndarray:
    """Rows: L2-normalised item embeddings of a SASRec trained on the sequences (no valid split seen).
    With a cache_dir the table is kept there, keyed by the sequences and settings: a second
    tokenize that only moves --collab-weight or the codebooks does not train it again."""
    key = hashlib.sha256(json.dumps([n_items, dim, epochs, sequences]).encode()).hexdigest()[:16]
    cached = cache_dir / f"sasrec_item_emb_{key}.npy" if cache_dir else None
    if cached is not None and cached.exists():
        return np.load(cached)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)  # the initial table, so the codes are reproducible
    model = SASRec(n_items, dim=dim).to(device)
    train_sequential(model, n_items, sequences, valid=None, max_epochs=epochs, desc="SASRec item embeddings")
    table = normalise_rows(model.item.weight[1:].detach().float().cpu().numpy()).astype(np.float32)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, table)
    return table


COLLAB_SOURCES = ("pmi", "sasrec")


def align_embeddings(
    content: np.ndarray,
    sequences: list[list[int]],
    weight: float = 1.0,
    dim: int = 64,
    source: str = "pmi",
    epochs: int = 30,
    cache_dir: Path | None = None,
) -> np.ndarray:
    if source not in COLLAB_SOURCES:
        raise ThinkRecError(f"collab_source must be one of {', '.join(COLLAB_SOURCES)}, not {source!r}")
    if source == "sasrec":
        collab = sequential_embeddings(len(content), sequences, dim, epochs, cache_dir)
    else:
        collab = collaborative_embeddings(len(content), sequences, dim)
    return np.concatenate([normalise_rows(content), weight * collab], axis=1).astype(np.float32)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (an all-zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
