"""Top-K recommendation with the LLM: beam search over SID codes, constrained to the catalogue's
prefix trie or free (to measure how often the model spells a real item on its own).

A SID has a fixed number of code tokens, so the search is short and written out here rather than
through `generate(num_beams=...)`: HF beam search copies every prompt num_beams times *before*
the prefill, which costs num_beams full prompt passes; here each prompt is prefilled once and its
beams decode in that one cache row under a tree mask (TreeBranches). One prefill also serves both
the constrained and the free search.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from tqdm import tqdm

from model.fastpath import base_model, text_config
from tokenizer_ext.prompt_block import block_aligned
from tokenizer_ext.sid import SID_BEGIN, TokenTrie, prefix_counts


@dataclass
class BeamOutput:
    items: list[list[int]]  # per prompt: catalogue items in beam order (illegal beams dropped)
    legal: int  # beams that decoded to a catalogue item
    total: int  # beams returned


def generation_prompt(tok, messages: list[dict], answer_prefix: str = "", aligned: bool = True) -> str:
    """The chat prompt, opened at the assistant turn with <|sid_begin|>: the answer is a SID.
    `answer_prefix` goes before it (e.g. a rationale the model wrote first). Leading fillers make
    it whole KV blocks, as the served search's prompt is (tokenizer_ext.prompt_block); `aligned=False`
    leaves them out, as vLLM's own /v1 chat prompt does."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + answer_prefix + SID_BEGIN
    return block_aligned(tok, text) if aligned else text


def _allowed_mask(
    trie: TokenTrie, prefixes: list[list[int]], vocab: int, excluded: list[Counter] | None = None
) -> torch.Tensor:
    """Rows' allowed next tokens. `excluded[r]` counts, per code prefix, the items row r may not
    return (seen items, or items a request rules out: `prefix_counts`); a branch is closed as soon
    as every item under it is excluded, as the served search does (serve/search.py)."""
    mask = torch.zeros(len(prefixes), vocab, dtype=torch.bool)
    under = trie.index.items_under
    for r, p in enumerate(prefixes):
        ids = trie.allowed_after(p)
        if not ids:  # off the trie (a dead beam): nothing is allowed
            continue
        mask[r, ids] = True
        if excluded and excluded[r]:
            head = tuple(trie.code_of_id[t][1] for t in p)
            for t in ids:
                child = (*head, trie.code_of_id[t][1])
                if excluded[r][child] >= under[child]:
                    mask[r, t] = False
    return mask


def _prefill(model, tok, prompts: list[list[dict]], answer_prefixes: list[str] | None = None):
    """One forward pass over the left-padded generation prompts: (encoding, output with KV cache)."""
    tok.padding_side = "left"
    texts = [generation_prompt(tok, m, answer_prefixes[i] if answer_prefixes else "") for i, m in enumerate(prompts)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    # only the last position's logits are used: the full (B, T, vocab) tensor would cost GiBs
    return enc, model(**enc, position_ids=pos, use_cache=True, logits_to_keep=1)


class TreeBranches:
    """Several continuations of each prefilled prompt decoded side by side in ONE cache row.

    A continuation's tokens go into the prompt's own KV cache, and a 4D mask lets each see the
    prompt and its own earlier tokens only (tree attention). Copying the prompt's cache per beam, as
    HF does, moved GBs a step and cost 4x the search itself on CPU; here a step adds `width`
    tokens per prompt. `close()` crops the cache back to the prompt, so it serves the next search."""

    def __init__(self, model, prefill, attn: torch.Tensor, width: int):
        self.model, self.cache = model, prefill.past_key_values
        self.prompt_len = self.cache.get_seq_length()
        B = attn.shape[0]
        self.prompt_seen = attn.bool()[:, None, :].expand(B, width, -1)
        self.last_pos = attn.sum(-1, keepdim=True) - 1  # (B, 1): last prompt position (left padding)
        self.seen = torch.zeros(B, width, 0, dtype=torch.bool, device=attn.device)  # (B, width, added)
        self.steps = 0
        attention = getattr(text_config(base_model(model)), "_attn_implementation", "sdpa")
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"tree decoding needs sdpa or eager attention, not {attention}")
        self.bool_mask = attention == "sdpa"

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per branch (B, width); returns the next-token logits (B, width, vocab)."""
        B, k = tokens.shape
        self.steps += 1
        self.seen = torch.cat([self.seen, torch.eye(k, dtype=torch.bool, device=tokens.device).expand(B, k, k)], -1)
        allowed = torch.cat([self.prompt_seen, self.seen], -1)[:, None]  # (B, 1, width, prompt + added)
        if self.bool_mask:
            mask = allowed
        else:  # eager attention adds its mask to the scores
            blocked = torch.finfo(torch.float32).min
            mask = torch.zeros(allowed.shape, device=tokens.device).masked_fill(~allowed, blocked)
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=(self.last_pos + self.steps).expand(B, k),
            past_key_values=self.cache,
            use_cache=True,
        )
        return out.logits

    def reorder(self, parent: torch.Tensor) -> None:
        """Branch j continues branch parent[b, j] (beam search): it inherits that branch's tokens."""
        self.seen = self.seen.gather(1, parent.unsqueeze(-1).expand(-1, -1, self.seen.shape[-1]))

    def close(self) -> None:
        added = self.cache.get_seq_length() - self.prompt_len
        if added:
            self.cache.crop(-added)


@torch.no_grad()
def trie_beam_search(
    model,
    prefill,
    attn: torch.Tensor,
    trie: TokenTrie,
    num_beams: int,
    constrained: bool,
    excluded: list[set[tuple[int, ...]]] | None = None,
):
    """Beam search over `trie.levels` code tokens after a prefilled prompt batch. Constrained,
    `excluded[b]` (codes of items prompt b has seen) are never completed, so no beam is spent on them.
    Returns tokens (B, num_beams, levels) and scores (B, num_beams); -inf scores are dead beams.
    The prefill's cache is left as it was, so one prefill serves several searches."""
    logp = torch.log_softmax(prefill.logits[:, -1].float(), dim=-1)
    B, V = logp.shape
    gone = [prefix_counts(e) for e in excluded] if constrained and excluded else None
    per_row = [g for g in gone for _ in range(num_beams)] if gone else None
    if constrained:
        logp = logp.masked_fill(~_allowed_mask(trie, [[]] * B, V, gone).to(logp.device), -torch.inf)
    scores, first = logp.topk(num_beams, dim=-1)  # (B, k)
    tokens = first.unsqueeze(-1)
    branches = TreeBranches(model, prefill, attn, num_beams)
    try:
        for _ in range(1, trie.levels):
            logp = torch.log_softmax(branches.step(tokens[:, :, -1]).float(), dim=-1).reshape(B * num_beams, V)
            if constrained:
                prefixes = tokens.reshape(B * num_beams, -1).tolist()
                logp = logp.masked_fill(~_allowed_mask(trie, prefixes, V, per_row).to(logp.device), -torch.inf)
            total = (scores.reshape(-1, 1) + logp).view(B, num_beams * V)
            scores, flat = total.topk(num_beams, dim=-1)
            parent, tok_id = flat // V, flat % V
            tokens = torch.cat(
                [tokens.gather(1, parent.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])), tok_id.unsqueeze(-1)], -1
            )
            branches.reorder(parent)
    finally:
        branches.close()
    return tokens, scores


@torch.no_grad()
def beam_recommend(
    model,
    tok,
    trie: TokenTrie,
    index_lookup,
    prompts: list[list[dict]],
    num_beams: int,
    batch_size: int = 8,
    modes: tuple[bool, ...] = (True, False),
    desc: str = "beam search",
    exclude: list[set[tuple[int, ...]]] | None = None,
    answer_prefixes: list[str] | None = None,
) -> dict[bool, BeamOutput]:
    """Top items per prompt for each mode (True = constrained to the trie, False = free).
    `exclude[i]`: codes the constrained search must not return for prompt i (its seen items).
    `answer_prefixes[i]`: assistant text written before the SID (a rationale)."""
    results = {m: BeamOutput([], 0, 0) for m in modes}
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc):
        chunk = answer_prefixes[start : start + batch_size] if answer_prefixes else None
        enc, prefill = _prefill(model, tok, prompts[start : start + batch_size], chunk)
        for mode in modes:
            excluded = exclude[start : start + batch_size] if exclude and mode else None
            tokens, scores = trie_beam_search(model, prefill, enc["attention_mask"], trie, num_beams, mode, excluded)
            res = results[mode]
            for row_tokens, row_scores in zip(tokens.tolist(), scores.tolist(), strict=True):
                found: list[int] = []
                for beam, score in zip(row_tokens, row_scores, strict=True):
                    if score == -float("inf"):
                        continue
                    code = trie.decode_codes(beam)
                    item = index_lookup(code) if code is not None else None
                    res.total += 1
                    if item is not None:
                        res.legal += 1
                        if item not in found:
                            found.append(item)
                res.items.append(found)
    return results


@torch.no_grad()
def trie_sample(
    model,
    tok,
    trie: TokenTrie,
    prompts: list[list[dict]],
    group: int,
    constrained: bool,
    temperature: float = 1.0,
    exclude: list[set[tuple[int, ...]]] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[list[int]]]:
    """`group` codes sampled per prompt (code-token ids, `trie.levels` each), from one prefill per
    prompt. Constrained, the codes stay in the trie and avoid `exclude[i]` where the trie leaves
    another choice; free, they are whatever the model spells."""
    enc, out = _prefill(model, tok, prompts)
    B = len(prompts)
    logits = out.logits[:, -1].repeat_interleave(group, dim=0)
    gone = [prefix_counts(e) for e in exclude] if constrained and exclude else []
    per_row = [g for g in gone for _ in range(group)] or None
    tokens = torch.empty(B * group, 0, dtype=torch.long, device=logits.device)
    branches = TreeBranches(model, out, enc["attention_mask"], group)  # its own prefill: no crop needed
    for step in range(trie.levels):
        if step:
            logits = branches.step(tokens[:, -1].view(B, group)).reshape(B * group, -1)
        logits = logits.float() / temperature
        if constrained:
            prefixes = tokens.tolist()
            mask = _allowed_mask(trie, prefixes, logits.shape[-1], per_row).to(logits.device)
            dead = ~mask.any(-1)
            if dead.any():  # every completion was excluded: a seen item beats a dead end
                rows = dead.nonzero().flatten().tolist()
                mask[rows] = _allowed_mask(trie, [prefixes[r] for r in rows], logits.shape[-1]).to(logits.device)
            logits = logits.masked_fill(~mask, -torch.inf)
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        tokens = torch.cat([tokens, nxt], dim=-1)
    return tokens.view(B, group, trie.levels).tolist()
