"""Baselines on the same split: most-popular and a SASRec-style causal self-attention model
(Kang & McAuley, 2018) trained with full softmax over the catalogue."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from tqdm import tqdm


def popularity_rank(train_sequences: list[list[int]], histories: list[list[int]], k: int) -> list[list[int]]:
    counts = Counter(i for s in train_sequences for i in s)
    order = [i for i, _ in counts.most_common()]
    out = []
    for h in histories:
        seen = set(h)
        out.append([i for i in order if i not in seen][:k])
    return out


class SASRec(torch.nn.Module):
    def __init__(
        self, n_items: int, dim: int = 64, max_len: int = 50, layers: int = 2, heads: int = 2, dropout: float = 0.2
    ):
        super().__init__()
        self.max_len = max_len
        self.item = torch.nn.Embedding(n_items + 1, dim, padding_idx=0)  # index 0 = padding
        self.pos = torch.nn.Embedding(max_len, dim)
        layer = torch.nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(dim)
        self.drop = torch.nn.Dropout(dropout)
        for p in self.parameters():  # xavier, as the reference SASRec: N(0, 1) embeddings train far slower
            if p.dim() > 1:
                torch.nn.init.xavier_normal_(p)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, L) item ids + 1, left-padded with 0. Returns (B, L, n_items) next-item logits."""
        L = seq.shape[1]
        h = self.drop(self.item(seq) * self.item.embedding_dim**0.5 + self.pos(torch.arange(L)))
        causal = torch.ones(L, L, dtype=torch.bool).triu(1)  # True = may not attend (future)
        h = self.norm(self.encoder(h, mask=causal, src_key_padding_mask=seq == 0, is_causal=True))
        return h @ self.item.weight[1:].T


def _left_pad(seqs: list[list[int]], L: int) -> torch.Tensor:
    out = np.zeros((len(seqs), L), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-L:]
        if s:
            out[r, L - len(s) :] = np.asarray(s) + 1
    return torch.from_numpy(out)


def train_sasrec(
    n_items: int, train_sequences: list[list[int]], epochs: int = 60, seed: int = 0, batch: int = 128
) -> SASRec:
    torch.manual_seed(seed)
    model = SASRec(n_items)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # every position of every train sequence predicts the next item: long sequences are cut,
    # from the newest end, into overlapping windows of max_len + 1 so no transition is lost
    L = model.max_len + 1
    seqs = []
    for s in train_sequences:
        for end in range(len(s), 1, -model.max_len):
            seqs.append(s[max(0, end - L) : end])
    for epoch in tqdm(range(epochs), desc="SASRec"):
        model.train()
        perm = np.random.default_rng(seed + epoch).permutation(len(seqs))
        for start in range(0, len(seqs), batch):
            chunk = _left_pad([seqs[i] for i in perm[start : start + batch]], L)
            inp, tgt = chunk[:, :-1], chunk[:, 1:] - 1  # target -1 where padded
            logits = model(inp)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_items), tgt.reshape(-1), ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def sasrec_rank(model: SASRec, histories: list[list[int]], k: int) -> list[list[int]]:
    out = []
    for start in range(0, len(histories), 256):
        hs = histories[start : start + 256]
        scores = model(_left_pad(hs, model.max_len))[:, -1]
        for r, h in enumerate(hs):
            scores[r, list(set(h))] = -torch.inf  # never recommend what the user has seen
        out.extend(scores.topk(k, dim=-1).indices.tolist())
    return out
