"""The engine-side trie beam search (serve/search.py) against a plain beam search, on a small trie
and a deterministic stand-in for the engine's scores (the real engine: tests/test_serve.py)."""

from __future__ import annotations

import asyncio
import math
import random

from serve.search import TrieSearch
from tokenizer_ext.sid import SIDIndex, TokenTrie, sid_tokens

LEVELS, CODEBOOK = 3, 6


def _setup(seed: int = 0):
    rng = random.Random(seed)
    codes = sorted({tuple(rng.randrange(CODEBOOK) for _ in range(LEVELS)) for _ in range(120)})
    index = SIDIndex(codes, LEVELS, CODEBOOK)
    vocab = {t: i + 10 for i, t in enumerate(sid_tokens(LEVELS, CODEBOOK))}
    trie = TokenTrie(index, vocab)
    # log p(child | prefix): a fixed random distribution per prefix, over all code tokens of the level
    table: dict[tuple[int, ...], dict[int, float]] = {}
    for prefix in index.trie:
        weights = [rng.random() ** 3 for _ in range(CODEBOOK)]
        total = sum(weights) * 1.5  # a third of the mass outside the code tokens
        table[prefix] = {c: math.log(w / total) for c, w in enumerate(weights)}
    return index, trie, table


def _engine(trie: TokenTrie, table, calls: list):
    """What the engine answers in "score" mode: per step the greedy child and the children's logprobs."""

    async def score(prompt_ids, token_ids, num_logprobs, steps):
        calls.append(steps)
        at = trie.open_prefix(prompt_ids)
        out = []
        for _ in range(steps):
            children = trie.index.next_codes(at)
            lp = {trie.level_ids[len(at)][c]: table[at][c] for c in children}
            best = max(lp, key=lp.get)
            out.append((best, {t: v for t, v in lp.items() if token_ids is None or t in token_ids}))
            at = (*at, trie.code_of_id[best][1])
        return out

    return score


def _plain_beam(index: SIDIndex, table, k: int, beams: int, exclude: set[int]) -> list[int]:
    """Beam search as ranking.generate's: top-`beams` at every level, excluded items masked at the last."""
    beam = [(0.0, ())]
    seen = {index.codes[i] for i in exclude}
    for depth in range(LEVELS):
        cand = [
            (s + table[p][c], (*p, c))
            for s, p in beam
            for c in index.next_codes(p)
            if depth + 1 < LEVELS or (*p, c) not in seen
        ]
        beam = sorted(cand, reverse=True)[:beams]
    return [index.item_of[p] for _, p in beam][:k]


def test_same_items_as_a_plain_beam_search_in_fewer_requests():
    index, trie, table = _setup()
    search = TrieSearch(index, trie)
    prompt = [1, 2, trie.begin_id]
    for k, beams in ((5, 5), (10, 10), (3, 8)):
        calls: list[int] = []
        hits, requests = asyncio.run(search.top_k(_engine(trie, table, calls), prompt, k, beams))
        assert [h.item for h in hits] == _plain_beam(index, table, k, beams, set())
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert requests == len(calls) < 1 + 2 * beams  # a request walks down; hopeless prefixes are skipped


def test_excluded_items_never_come_back_and_never_waste_a_beam():
    index, trie, table = _setup(1)
    search = TrieSearch(index, trie)
    prompt = [trie.begin_id]
    best = _plain_beam(index, table, 8, 8, set())
    # exclude the best items and every item of the best level-2 prefix: a dead subtree
    dead = index.codes[best[0]][:2]
    exclude = set(best[:3]) | {i for i, c in enumerate(index.codes) if c[:2] == dead}
    hits, _ = asyncio.run(search.top_k(_engine(trie, table, []), prompt, 8, 8, exclude))
    items = [h.item for h in hits]
    assert len(items) == 8 and not set(items) & exclude
    # at least as good as the plain search, which spends a beam on the dead prefix
    plain = _plain_beam(index, table, 8, 8, exclude)
    score = {
        i: sum(table[index.codes[i][:d]][index.codes[i][d]] for d in range(LEVELS)) for i in range(len(index.codes))
    }
    assert all(score[a] >= score[b] - 1e-9 for a, b in zip(items, plain, strict=False))


def test_a_flat_search_returns_the_same_items_with_one_token_per_request():
    index, trie, table = _setup(2)
    search = TrieSearch(index, trie)
    prompt = [1, 2, trie.begin_id]
    best = _plain_beam(index, table, 10, 10, set())
    exclude = set(best[:2])
    for k, beams in ((5, 5), (10, 10), (3, 8)):
        deep, flat = [], []
        want = asyncio.run(search.top_k(_engine(trie, table, deep), prompt, k, beams, exclude))[0]
        hits, requests = asyncio.run(search.top_k(_engine(trie, table, flat), prompt, k, beams, exclude, flat=True))
        assert [h.item for h in hits] == [h.item for h in want]
        assert [h.score for h in hits] == [h.score for h in want]
        # one level per engine step: every request asks one token; each level expands the whole beam
        assert set(flat) == {1} and requests == len(flat) <= 1 + 2 * beams
        assert len(deep) <= len(flat)  # the deep search sends fewer requests (each recomputes the prompt's tail)
