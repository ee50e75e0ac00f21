"""Baselines on the same split, tuned to the level of RecBole 1.2.1's implementations:

- most-popular;
- SASRec (Kang & McAuley, 2018) as RecBole builds it: post-LayerNorm transformer, 2 layers x 2
  heads, hidden 64, inner 256, GELU, dropout 0.5, N(0, 0.02) init, full-softmax cross-entropy;
- GRU4Rec (Hidasi et al., 2016) as RecBole builds it: embedding 64, one GRU layer of 128, a
  dense layer back to 64, embedding dropout 0.3, full-softmax cross-entropy.

Both train on every next-item transition of the train split (all positions of windows of up to
`max_len` + 1 items, windows overlapping so each target is also seen with a long history), and
stop early on the valid split's NDCG@10, as RecBole's trainer does. The model that scored best on
valid is the one ranked on the test split.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from thinkrec.metrics import rank_metrics


def popularity_rank(train_sequences: list[list[int]], histories: list[list[int]], k: int) -> list[list[int]]:
    counts = Counter(i for s in train_sequences for i in s)
    order = [i for i, _ in counts.most_common()]
    out = []
    for h in histories:
        seen = set(h)
        out.append([i for i in order if i not in seen][:k])
    return out


class _Dropout(torch.nn.Module):
    """Dropout with its mask drawn as uniform >= p. Same distribution as torch's, but torch's CPU
    Bernoulli draw was 3.5x slower and, at p = 0.5 on every layer, a third of a SASRec epoch."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * ((torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p)))


class _Block(torch.nn.Module):
    """One post-LayerNorm transformer layer as RecBole's SASRec has it: attention (dropout on the
    attention probabilities) -> dropout -> add & norm, then dense -> GELU -> dense -> dropout -> add &
    norm (no dropout inside the feed-forward, which torch.nn.TransformerEncoderLayer adds)."""

    def __init__(self, dim: int, heads: int, inner: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.ff = torch.nn.Sequential(torch.nn.Linear(dim, inner), torch.nn.GELU(), torch.nn.Linear(inner, dim))
        self.drop_attn, self.drop1, self.drop2 = _Dropout(dropout), _Dropout(dropout), _Dropout(dropout)
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=1e-12), torch.nn.LayerNorm(dim, eps=1e-12)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, L, dim); mask: (B, 1, L, L) additive."""
        B, L, D = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        att = self.drop_attn(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // self.heads) + mask, dim=-1))
        a = self.out((att @ v).transpose(1, 2).reshape(B, L, D))
        h = self.norm1(h + self.drop1(a))
        return self.norm2(h + self.drop2(self.ff(h)))


class SASRec(torch.nn.Module):
    def __init__(
        self, n_items: int, dim: int = 64, max_len: int = 50, layers: int = 2, heads: int = 2, dropout: float = 0.5
    ):
        super().__init__()
        self.max_len = max_len
        self.item = torch.nn.Embedding(n_items + 1, dim, padding_idx=0)  # index 0 = padding
        self.pos = torch.nn.Embedding(max_len, dim)
        self.norm = torch.nn.LayerNorm(dim, eps=1e-12)
        self.drop = _Dropout(dropout)
        self.blocks = torch.nn.ModuleList(_Block(dim, heads, dim * 4, dropout) for _ in range(layers))
        _init_normal(self)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, L) item ids + 1, left-padded with 0. Returns (B, L, n_items) next-item logits."""
        L = seq.shape[1]
        h = self.drop(self.norm(self.item(seq) + self.pos(torch.arange(L, device=seq.device))))
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).triu(1)  # True = may not attend (future)
        # an additive mask (as RecBole's): future and padded keys get -1e4, so a padded query row, which
        # has no key left, averages harmlessly instead of turning into NaN and leaking into later layers
        blocked = causal.unsqueeze(0) | (seq == 0).unsqueeze(1)
        mask = torch.zeros(blocked.shape, device=seq.device).masked_fill(blocked, -1e4).unsqueeze(1)
        for block in self.blocks:
            h = block(h, mask)
        return h @ self.item.weight[1:].T


class GRU4Rec(torch.nn.Module):
    def __init__(self, n_items: int, dim: int = 64, hidden: int = 128, dropout: float = 0.3, max_len: int = 50):
        super().__init__()
        self.max_len = max_len
        self.item = torch.nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.drop = _Dropout(dropout)
        self.gru = torch.nn.GRU(dim, hidden, batch_first=True, bias=False)
        self.dense = torch.nn.Linear(hidden, dim)
        torch.nn.init.xavier_normal_(self.item.weight)
        for w in self.gru.parameters():
            torch.nn.init.xavier_uniform_(w)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.drop(self.item(seq)))  # left padding: pads come first and carry no item
        return self.dense(h) @ self.item.weight[1:].T


def _init_normal(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.zeros_(m.bias)
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)


def _left_pad(seqs: list[list[int]], L: int) -> torch.Tensor:
    out = np.zeros((len(seqs), L), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-L:]
        if s:
            out[r, L - len(s) :] = np.asarray(s) + 1
    return torch.from_numpy(out)


def training_windows(sequences: list[list[int]], max_len: int, stride: int) -> list[list[int]]:
    """Windows of up to max_len + 1 items ending every `stride` items from each sequence's newest end:
    every transition is a target at least once, most of them also with a long history before them."""
    L = max_len + 1
    out = []
    for s in sequences:
        for end in range(len(s), 1, -stride):
            out.append(s[max(0, end - L) : end])
    return out


@dataclass
class BaselineRun:
    model: torch.nn.Module
    best_epoch: int
    valid: dict[str, float]  # the valid metrics of the kept model
    epochs_run: int


def train_sequential(
    model: torch.nn.Module,
    n_items: int,
    train_sequences: list[list[int]],
    valid: tuple[list[list[int]], list[int]] | None,
    max_epochs: int = 200,
    patience: int = 10,
    eval_every: int = 2,
    seed: int = 0,
    batch: int = 128,
    lr: float = 1e-3,
    stride: int = 5,
    desc: str = "baseline",
) -> BaselineRun:
    """Adam on full-softmax cross-entropy at every position; early stop on valid NDCG@10 (checked
    every `eval_every` epochs, stopping after `patience` checks without a gain), best model kept."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    seqs = training_windows(train_sequences, model.max_len, stride)
    L = model.max_len + 1
    best, best_state, best_epoch, waited, epoch = -1.0, None, 0, 0, 0
    best_valid: dict[str, float] = {}
    bar = tqdm(range(1, max_epochs + 1), desc=desc)
    for epoch in bar:
        model.train()
        perm = np.random.default_rng(seed + epoch).permutation(len(seqs))
        for start in range(0, len(seqs), batch):
            chunk = _left_pad([seqs[i] for i in perm[start : start + batch]], L).to(device)
            inp, tgt = chunk[:, :-1], chunk[:, 1:] - 1  # target -1 where padded
            logits = model(inp)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_items), tgt.reshape(-1), ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if valid is None or epoch % eval_every:
            continue
        metrics = rank_metrics(sequential_rank(model, valid[0], 10), valid[1], [10])
        bar.set_postfix(valid_ndcg10=f"{metrics['ndcg@10']:.4f}", best=f"{max(best, 0):.4f}")
        if metrics["ndcg@10"] > best:
            best, best_epoch, waited, best_valid = metrics["ndcg@10"], epoch, 0, metrics
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return BaselineRun(model, best_epoch or epoch, best_valid, epoch)


BASELINES: dict[str, Callable[[int], torch.nn.Module]] = {
    "sasrec": lambda n: SASRec(n),
    "gru4rec": lambda n: GRU4Rec(n),
}


@torch.no_grad()
def sequential_rank(model: torch.nn.Module, histories: list[list[int]], k: int) -> list[list[int]]:
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(histories), 256):
        hs = histories[start : start + 256]
        scores = model(_left_pad(hs, model.max_len).to(next(model.parameters()).device))[:, -1]
        for r, h in enumerate(hs):
            scores[r, list(set(h))] = -torch.inf  # never recommend what the user has seen
        out.extend(scores.topk(k, dim=-1).indices.tolist())
    model.train(was_training)
    return out
