"""The trie constraint on its own (the vLLM processor is a thin adapter over it): fast, no server."""

from __future__ import annotations

import random

import torch

from serve.trie_masker import TrieMasker
from tokenizer_ext.sid import SID_BEGIN, SID_END, SIDIndex, TokenTrie, sid_tokens

TEXT_VOCAB = 50  # ids 0..49 are ordinary text tokens; 0 is end-of-sequence
EOS = 0


def _trie(n_items: int = 200, levels: int = 3, k: int = 8, seed: int = 0) -> TokenTrie:
    rng = random.Random(seed)
    codes = rng.sample([(a, b, c) for a in range(k) for b in range(k) for c in range(k)], n_items)
    vocab = {t: TEXT_VOCAB + i for i, t in enumerate(sid_tokens(levels, k))}
    return TokenTrie(SIDIndex(codes, levels, k), vocab)


def _decode(masker: TrieMasker, rows: dict[int, list[int]], steps: int, seed: int = 0) -> None:
    """Greedy decoding on random logits, every row in one batch, the mask applied each step."""
    gen = torch.Generator().manual_seed(seed)
    vocab = TEXT_VOCAB + len(masker.trie.code_ids) + 2
    for _ in range(steps):
        masker.advance()
        logits = masker.apply(torch.randn(max(rows) + 1, vocab, generator=gen))
        for r, out in rows.items():
            out.append(int(logits[r].argmax()))


def test_items_mode_only_spells_catalogue_codes():
    trie = _trie()
    masker = TrieMasker(trie, [EOS])
    rows = {r: [] for r in range(16)}
    for r, out in rows.items():
        masker.add(r, "items", [1, 2, 3], out)
    _decode(masker, rows, steps=3 * (trie.levels + 2))
    for out in rows.values():
        toks = out[: out.index(EOS)] if EOS in out else out
        i = 0
        while i + trie.levels + 2 <= len(toks):
            assert toks[i] == trie.begin_id and toks[i + trie.levels + 1] == trie.end_id
            assert trie.index.lookup(trie.decode_codes(toks[i + 1 : i + 1 + trie.levels])) is not None
            i += trie.levels + 2
        assert all(t in (trie.begin_id, *trie.code_ids) for t in toks[i:])  # a SID still open at the cut


def test_constrain_mode_blocks_stray_codes_but_not_text():
    trie = _trie()
    masker = TrieMasker(trie, [EOS])
    out: list[int] = []
    masker.add(0, "constrain", [5], out)
    masker.advance()
    logits = torch.zeros(1, TEXT_VOCAB + len(trie.code_ids) + 2)
    masked = masker.apply(logits.clone())
    assert torch.isinf(masked[0, trie.code_ids]).all() and masked[0, trie.end_id] == -torch.inf
    assert (masked[0, :TEXT_VOCAB] == 0).all() and masked[0, trie.begin_id] == 0


def test_prompt_tail_switches_the_constraint_on_without_opting_in():
    trie = _trie()
    first_level = trie.allowed(())
    masker = TrieMasker(trie, [EOS])
    code = trie.index.codes[0]
    open_prompt = [7, trie.begin_id, trie.level_ids[0][code[0]]]
    masker.add(0, None, open_prompt, [])
    masker.add(1, None, [7, 8], [])  # free: not tracked at all
    assert set(masker.rows) == {0}
    masker.advance()
    masked = masker.apply(torch.zeros(2, TEXT_VOCAB + len(trie.code_ids) + 2))
    allowed = set(torch.isfinite(masked[0]).nonzero().flatten().tolist())
    assert allowed == set(trie.allowed((code[0],))) and not allowed & set(first_level) - allowed
    assert torch.isfinite(masked[1]).all()


def test_rows_follow_moves_and_swaps():
    trie = _trie()
    masker = TrieMasker(trie, [EOS])
    masker.add(0, "items", [], [])
    masker.add(1, "constrain", [], [])
    masker.move(0, 1, swap=True)
    assert masker.rows[1].mode == "items" and masker.rows[0].mode == "constrain"
    masker.move(1, 3, swap=False)
    assert set(masker.rows) == {0, 3}
    masker.remove(3)
    assert set(masker.rows) == {0}


def test_sid_strings_round_trip_through_the_token_trie():
    trie = _trie()
    assert trie.begin_id == TEXT_VOCAB + sid_tokens(3, 8).index(SID_BEGIN)
    assert trie.end_id == TEXT_VOCAB + sid_tokens(3, 8).index(SID_END)
    assert trie.open_prefix([3, trie.begin_id]) == ()
    assert trie.open_prefix([3, trie.begin_id, trie.level_ids[0][1], trie.end_id]) is None
    assert trie.allowed((99,)) == [trie.end_id]  # off the trie: close at once rather than fail


def test_off_mode_leaves_an_open_prompt_unconstrained():
    trie = _trie()
    masker = TrieMasker(trie, [EOS])
    masker.add(0, "off", [7, trie.begin_id], [])
    assert not masker.rows
    logits = torch.zeros(1, TEXT_VOCAB + len(trie.code_ids) + 2)
    assert torch.isfinite(masker.apply(logits)).all()
