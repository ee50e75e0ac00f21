"""Add the SID tokens to an LLM's tokenizer and embedding table, initialised from meaning.

`resize_token_embeddings` gives every new row the mean embedding, so all SIDs would start out
scoring the same. Instead, the token for code k at level l starts at the mean embedding of the
titles of the items whose level-l code is k (each title embedded as the mean of its LLM token
embeddings): a SID token begins near the words of the items it stands for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken

from backbone.llm import load_causal_lm
from tokenizer_ext.sid import SID_BEGIN, SID_END, SIDIndex, code_token, sid_tokens


@torch.no_grad()
def extend_llm(base_dir: Path, index: SIDIndex, titles: list[str], out_dir: Path) -> dict:
    tok, model = load_causal_lm(base_dir)
    new = sid_tokens(index.levels, index.codebook_size)
    # non-special tokens: they survive decoding with skip_special_tokens=True and still encode whole
    added = tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in new])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    emb = model.get_input_embeddings().weight

    title_vecs = torch.stack([_text_embedding(tok, emb, t) for t in titles])
    codes = np.asarray(index.codes)
    vocab = tok.get_vocab()
    for lv in range(index.levels):
        for c in range(index.codebook_size):
            members = np.flatnonzero(codes[:, lv] == c)
            vec = title_vecs[members].mean(0) if len(members) else title_vecs.mean(0)
            emb[vocab[code_token(lv, c)]] = vec
    emb[vocab[SID_BEGIN]] = _text_embedding(tok, emb, " [")
    emb[vocab[SID_END]] = _text_embedding(tok, emb, "]")
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != emb.data_ptr():
        # untied head: start the new output rows from the same vectors
        for t in new:
            out.weight[vocab[t]] = emb[vocab[t]]

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"added_tokens": int(added), "vocab_size": len(tok)}


def _text_embedding(tok, emb: torch.Tensor, text: str) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return emb[ids].mean(0) if ids else emb.mean(0)
