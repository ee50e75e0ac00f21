"""The top-K users get, measured one way for the choice of checkpoint (valid split) and for the
report (test split): constrained beam search with seen items excluded, then Recall/NDCG@K, the mean
P-Score of the K items, and the business rule's flagged share among them."""

from __future__ import annotations

import numpy as np

from ranking.generate import BeamOutput, beam_recommend
from ranking.rationale import sample_rationales
from rl.pscore import PScore
from sft_data.prompts import behaviour_prompt
from sft_data.qa import rationale_well_formed, reasoning_prompt
from thinkrec.data import Dataset
from thinkrec.metrics import rank_metrics
from tokenizer_ext.sid import SIDIndex, TokenTrie

NUM_BEAMS = 20  # beams searched for a top-10 (seen items are excluded inside the search)


def split_examples(ds: Dataset, users: list[int], split: str) -> tuple[list[list[int]], list[int]]:
    return [ds.users[u].history_for(split) for u in users], [ds.users[u].target_for(split) for u in users]


def topk_metrics(
    model,
    tok,
    trie: TokenTrie,
    index: SIDIndex,
    ds: Dataset,
    histories: list[list[int]],
    targets: list[int],
    pscore: PScore,
    flagged: set[int],
    history_len: int,
    k: int = 10,
    desc: str = "top-K",
    think_tokens: int = 0,
) -> tuple[dict, BeamOutput]:
    """Metrics of the constrained beam top-K, and the beam output (for legality counts). With
    `think_tokens`, the model is asked reasoning-first: it writes a rationale (greedy, at most that
    many tokens), then the search runs after it; the row adds the share of well-formed rationales."""
    exclude = [{index.codes[i] for i in h} for h in histories]
    prefixes, formed = None, None
    if think_tokens:
        prompts = [reasoning_prompt(ds, index, h, history_len) for h in histories]
        drafts = sample_rationales(model, tok, prompts, 1, think_tokens, 0.0)
        prefixes = [text + "\n" for text, _ in drafts]
        pairs = zip(histories, drafts, strict=True)
        formed = float(np.mean([rationale_well_formed(ds, h[-history_len:], t, c) for h, (t, c) in pairs]))
    else:
        prompts = [behaviour_prompt(ds, index, h, history_len) for h in histories]
    beams = beam_recommend(
        model, tok, trie, index.lookup, prompts, max(k, NUM_BEAMS), 8, (True,), desc, exclude, prefixes
    )[True]
    top = [[i for i in found if i not in set(h)][:k] for found, h in zip(beams.items, histories, strict=True)]
    row = rank_metrics(top, targets, [k])
    flat_h = [h for h, t in zip(histories, top, strict=True) for _ in t]
    flat_i = [i for t in top for i in t]
    row[f"pscore@{k}"] = float(np.mean(pscore.score(flat_h, flat_i))) if flat_i else 0.0
    row[f"flagged_share@{k}"] = float(np.mean([i in flagged for i in flat_i])) if flat_i else 0.0
    if formed is not None:
        row["well_formed_rationale"] = formed
    return row, beams
