"""The SID trie constraint as a logits mask, free of vLLM (the vLLM processor wraps it; the
benchmarks time it alone). Modes: see serve/logits_processor.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenizer_ext.sid import TokenTrie

MODES = ("constrain", "items", "off")


@dataclass
class _Row:
    mode: str  # "constrain", "items" or "tail" (prompt ended inside an open SID)
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
        inside_rows, inside_cols, outside, sid_only = [], [], [], []
        for r, row in self.rows.items():
            if r >= logits.shape[0]:
                continue
            if row.prefix is not None:
                ids = self._allowed(row.prefix)
                inside_rows.append(torch.full_like(ids, r))
                inside_cols.append(ids)
            elif row.mode == "items":
                sid_only.append(r)
            elif row.mode == "constrain":
                outside.append(r)
            # "tail" rows whose SID has closed are free again
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
