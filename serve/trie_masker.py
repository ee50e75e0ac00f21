"""The SID trie constraint as a logits mask, free of vLLM (the vLLM processor wraps it; the
benchmarks time it alone). Modes: see serve/logits_processor.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tokenizer_ext.sid import TokenTrie

MODES = ("constrain", "items", "off", "score")


@dataclass
class _Row:
    mode: str  # "constrain", "items", "score" or "tail" (prompt ended inside an open SID)
    output: list[int]  # vLLM's live list of generated token ids
    seen: int  # how many of `output` have been folded into `prefix`
    prefix: tuple[int, ...] | None  # codes since the open <|sid_begin|>; None = outside a SID


class TrieMasker:
    """The constraint itself, free of vLLM: per-row SID state and the in-place logits mask.
    Rows are keyed by their index in the batch, as vLLM's persistent batch numbers them."""

    def __init__(self, trie: TokenTrie, eos_ids: list[int], device: torch.device | str = "cpu") -> None:
        self.trie = trie
        self.device = torch.device(device)
        self.rows: dict[int, _Row] = {}
        self._code_ids = torch.tensor([*trie.code_ids, trie.end_id], dtype=torch.long, device=self.device)
        self._sid_only = torch.tensor([*eos_ids, trie.begin_id], dtype=torch.long, device=self.device)
        self._allowed_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def add(self, index: int, mode: str | None, prompt_ids: list[int], output_ids: list[int]) -> None:
        tail = self.trie.open_prefix(prompt_ids)
        if mode == "off" or (mode is None and tail is None):
            self.rows.pop(index, None)
        else:
            self.rows[index] = _Row(mode or "tail", output_ids, 0, tail)

    def remove(self, index: int) -> None:
        self.rows.pop(index, None)

    def move(self, a: int, b: int, swap: bool) -> None:
        ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
        if ra is not None:
            self.rows[b] = ra
        if rb is not None and swap:
            self.rows[a] = rb

    def advance(self) -> None:
        """Fold newly generated tokens into each row's SID state (usually one token per row)."""
        for row in self.rows.values():
            while row.seen < len(row.output):
                row.prefix = self.trie.step(row.prefix, row.output[row.seen])
                row.seen += 1

    def _allowed(self, prefix: tuple[int, ...]) -> torch.Tensor:
        hit = self._allowed_cache.get(prefix)
        if hit is None:
            hit = torch.tensor(self.trie.allowed(prefix), dtype=torch.long, device=self.device)
            self._allowed_cache[prefix] = hit
        return hit

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        inside_rows, inside_cols, outside, sid_only, score = [], [], [], [], []
        for r, row in self.rows.items():
            if r >= logits.shape[0]:
                continue
            if row.mode == "score" and row.prefix is not None and len(row.prefix) < self.trie.levels:
                score.append((r, self._allowed(row.prefix)))
            elif row.prefix is not None:
                ids = self._allowed(row.prefix)
                inside_rows.append(torch.full_like(ids, r))
                inside_cols.append(ids)
            elif row.mode == "items":
                sid_only.append(r)
            elif row.mode == "constrain":
                outside.append(r)
            # "tail" rows whose SID has closed are free again
        if score:
            self._apply_score(logits, score)
        if inside_rows:
            # keep only the trie's children: save them, blank the rows, put them back
            rows_t, cols_t = torch.cat(inside_rows), torch.cat(inside_cols)
            keep = logits[rows_t, cols_t]
            logits[rows_t.unique()] = -torch.inf
            logits[rows_t, cols_t] = keep
        if outside:
            # no stray code tokens outside an open SID
            idx = torch.tensor(outside, dtype=torch.long, device=logits.device).unsqueeze(1)
            logits[idx, self._code_ids.unsqueeze(0)] = -torch.inf
        if sid_only:
            idx = torch.tensor(sid_only, dtype=torch.long, device=logits.device).unsqueeze(1)
            keep = logits[idx, self._sid_only.unsqueeze(0)]
            logits[idx.squeeze(1)] = -torch.inf
            logits[idx, self._sid_only.unsqueeze(0)] = keep
        return logits

    def _apply_score(self, logits: torch.Tensor, rows: list[tuple[int, torch.Tensor]]) -> None:
        """Rows in "score" mode: the trie's children keep their log-probabilities under the *unmasked*
        distribution (as HF's trie beam search scores them), and the rest of the mass is spread evenly
        over every other token, so the engine's processed logprobs (a log-softmax after this) are
        exactly those. Renormalising over the children alone would rank differently. Spread thin,
        the rest stays below the best child, so greedy decoding walks on down the trie."""
        idx = torch.tensor([r for r, _ in rows], dtype=torch.long, device=logits.device)
        lse = torch.logsumexp(logits[idx].float(), dim=-1)
        vocab = logits.shape[1]
        for (r, ids), norm in zip(rows, lse.tolist(), strict=True):
            keep = logits[r, ids].float() - norm
            inside = torch.logsumexp(keep, dim=0).clamp(max=0.0)
            # log((1 - p_inside) / other tokens); -inf when the children hold all the mass
            logits[r] = (torch.log(-torch.expm1(inside)) - math.log(vocab - len(ids))).to(logits.dtype)
            logits[r, ids] = keep.to(logits.dtype)
