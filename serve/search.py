"""Top-K recommendation through the vLLM engine: a beam search over the SID trie, run level by level.

A SID is <|sid_begin|> + `levels` code tokens, so the search is `levels` rounds. A round expands
the beam's prefixes with engine requests sent concurrently (the engine runs them in one step):
the prompt (ending in <|sid_begin|>) plus the prefix. Every request runs the logits processor in
"score" mode: the engine returns the log-probabilities of exactly the trie's children of the
prefix, under the model's unmasked distribution (serve/trie_masker.py), which are the scores HF's
trie beam search (ranking/generate.py) ranks by. So the result is eval's beam search, every code is
a catalogue item, and items in `exclude` (the user's history) are removed inside the search:
subtrees holding only excluded items are never expanded and excluded leaves never take a slot.

What a request costs on vLLM: prefix caching keeps the prompt's full KV blocks, but a request
recomputes the prompt's last partial block (up to block_size tokens) before its own tokens, while
each further generated token costs one. So requests are few and go deep:
  - a request does not stop at its prefix's children: it walks on greedily to the last level
    (`levels - depth` tokens), and the children it meets on the way are kept; the best pair under
    each level-1 prefix, which every beam search keeps first, then costs nothing more;
  - a prefix is skipped when enough of the next level's candidates already score above it (a
    child scores at most its parent: log-probabilities are <= 0); prefixes go best first.
That spends the fewest tokens, which is what counts when many searches share the engine. A lone
search waits instead on the engine steps it takes one after the other (the walk's tokens and the
waves), so a `flat` search sends every beam prefix of a level at once, one code token each: one
engine step per level. Both return the same items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tokenizer_ext.sid import SIDIndex, TokenTrie, prefix_counts

# prompt token ids, token ids to score (or None), else top logprobs per step, steps
#   -> per step (token taken, {token id: logprob})
Score = Callable[[list[int], list[int] | None, int, int], Awaitable[list[tuple[int, dict[int, float]]]]]
MAX_SCORED_IDS = 128  # vLLM's cap on SamplingParams.logprob_token_ids
Node = tuple[float, tuple[int, ...]]  # (log-probability of the prefix, prefix codes)


@dataclass(frozen=True)
class Hit:
    item: int  # catalogue item index
    score: float  # log-probability of its code after the prompt


class TrieSearch:
    def __init__(self, index: SIDIndex, trie: TokenTrie) -> None:
        self.index, self.trie, self.levels = index, trie, index.levels

    async def top_k(
        self,
        score: Score,
        prompt_ids: list[int],
        k: int,
        beams: int,
        exclude: set[int] = frozenset(),
        flat: bool = False,
    ) -> tuple[list[Hit], int]:
        """The best `k` items not in `exclude` by a `beams`-wide beam search, and the engine requests it
        took; `prompt_ids` ends in <|sid_begin|>. flat: fewest engine steps rather than fewest tokens."""
        run = _Run(self, score, prompt_ids, beams, exclude, flat)
        beam: list[Node] = [(0.0, ())] if run.alive(()) else []
        for depth in range(self.levels):
            keep = k if depth + 1 == self.levels else beams
            beam = sorted(await run.level(beam, keep), reverse=True)[:keep]
        return [Hit(self.index.item_of[p], s) for s, p in beam], run.requests


class _Run:
    """One search: the engine calls, and the children log-probabilities learnt so far."""

    def __init__(
        self, search: TrieSearch, score: Score, prompt_ids: list[int], beams: int, exclude: set[int], flat: bool
    ):
        self.s, self.score, self.prompt_ids, self.flat = search, score, prompt_ids, flat
        self.excluded = prefix_counts(search.index.codes[i] for i in exclude)
        # without scored ids: enough top logprobs for the best `beams` allowed children
        widest = max(len(v) for v in search.index.trie.values())
        self.logprobs = min(widest, beams + len(exclude)) + 1
        self.known: dict[tuple[int, ...], dict[int, float]] = {}  # prefix -> {child code: logprob}
        self.requests = 0

    def alive(self, prefix: tuple[int, ...]) -> bool:
        # a subtree that holds only excluded items is never expanded
        return self.s.index.items_under[prefix] > self.excluded[prefix]

    async def level(self, beam: list[Node], keep: int) -> list[Node]:
        """The allowed children of the beam's prefixes, at least all that can be among the best `keep`."""
        todo = sorted(beam, reverse=True)
        children: list[Node] = []
        wave = len(todo) if self.flat else 4
        while todo:
            if len(children) >= keep:
                bar = sorted((s for s, _ in children), reverse=True)[keep - 1]
                todo = [node for node in todo if node[0] > bar]
            batch, todo = todo[:wave], todo[wave:]
            await asyncio.gather(*(self._learn(p) for _, p in batch if p not in self.known))
            for score, prefix in batch:
                for code, lp in self.known[prefix].items():
                    child = (*prefix, code)
                    if self.alive(child):
                        children.append((score + lp, child))
            wave *= 2
        return children

    async def _learn(self, prefix: tuple[int, ...]) -> None:
        """One request: the children of `prefix`, and of each prefix its greedy walk passes."""
        trie = self.s.trie
        tokens = [trie.level_ids[lv][c] for lv, c in enumerate(prefix)]
        # the engine scores exactly the code tokens of the levels ahead (as many levels as vLLM allows)
        ids: list[int] = []
        for lv in range(len(prefix), len(prefix) + 1 if self.flat else self.s.levels):
            if len(ids) + len(trie.level_ids[lv]) > MAX_SCORED_IDS:
                break
            ids += trie.level_ids[lv]
        depth = max(1, len(ids) // len(trie.level_ids[0]))
        steps = await self.score(self.prompt_ids + tokens, ids or None, self.logprobs, depth)
        self.requests += 1
        at = prefix
        for taken, logprobs in steps:
            codes = self.s.index.next_codes(at)
            level = trie.level_ids[len(at)]
            self.known.setdefault(at, {c: logprobs[level[c]] for c in codes if level[c] in logprobs})
            nxt = trie.code_of_id.get(taken)
            if nxt is None or nxt[0] != len(at) or nxt[1] not in codes:
                break  # the walk left the trie (only when the rest of the mass outweighs every child)
            at = (*at, nxt[1])
