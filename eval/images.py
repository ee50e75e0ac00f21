"""`thinkrec image-eval`: "more like this" with a picture that is no item (data/queries/ of
`--dataset digits`). The served model reads the picture and the trie beam search (ranking/generate.py,
the search `thinkrec eval` runs) lists catalogue items; a hit is an item of the picture's class.
As a reference, the same share for the picture's nearest items by the encoder's own features.
Writes RUN/eval/image_rec.json."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from model.vision_train import encode_pictures, image_paths, load_vision_model, picture_turn
from ranking.generate import generation_prompt, trie_beam_search
from thinkrec.config import VisionConfig
from thinkrec.data.digits import load_labels
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import TokenTrie

K = 5


@torch.no_grad()
def rank_pictures(
    vlm,
    tok,
    trie: TokenTrie,
    features: torch.Tensor,
    prompt: str,
    grid: int,
    beams: int,
    batch: int = 32,
    aligned: bool = True,
):
    """Per picture, the catalogue items of the constrained beam search, best first. `aligned`: the
    search's prompt in whole KV blocks (the ThinkRec search's), else as /v1/chat/completions reads it."""
    text = generation_prompt(tok, [picture_turn(prompt, grid)], aligned=aligned)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    ranked = []
    for start in range(0, len(features), batch):
        feats = features[start : start + batch]
        input_ids = ids.expand(len(feats), -1)
        attn = torch.ones_like(input_ids)
        embeds = vlm.embed(input_ids, feats)
        pos = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        prefill = vlm.llm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        tokens, scores = trie_beam_search(vlm.llm, prefill, attn, trie, beams, True)
        for row, row_scores in zip(tokens.tolist(), scores.tolist(), strict=True):
            codes = [trie.decode_codes(b) for b, s in zip(row, row_scores, strict=True) if s > -np.inf]
            items = [trie.index.lookup(c) for c in codes if c is not None]
            ranked.append([i for i in items if i is not None])
    return ranked


def rank_picture_files(cat, paths: list, beams: int, aligned: bool = True) -> list[list[int]]:
    """Per picture file, the catalogue items (indices) the served model of `cat` ranks for it: the
    VisionLM in HF, fp32, and the trie beam search of `beams` beams."""
    tok, vlm, meta = load_vision_model(cat.model_dir)
    feats = encode_pictures(list(paths), meta["grid"])
    prompt = meta.get("prompt", VisionConfig.prompt)
    return rank_pictures(vlm, tok, TokenTrie(cat.index, tok), feats, prompt, meta["grid"], beams, aligned=aligned)


def run_image_eval(cfg: VisionConfig, run: RunDir) -> dict:
    from model.vision_train import catalogue_image_dir
    from serve.catalogue import Catalogue
    from tokenizer_ext.embed import embed_images

    if cfg.image_beams < K:
        raise ThinkRecError(f"--image-beams must be at least {K}")
    cat = Catalogue.from_run(run.path)
    labels = load_labels(run)
    queries = sorted(labels["queries"])[: cfg.image_queries or None]
    if not queries:
        raise ThinkRecError("this run holds no query pictures (thinkrec data --dataset digits --query-share 0.2)")
    t0 = time.time()
    query_dir = run.path / "data" / "queries"
    ranked = rank_picture_files(cat, image_paths(query_dir, queries), cfg.image_beams)
    item_class = np.array([labels["items"][it.item_id] for it in cat.ds.items])
    truth = np.array([labels["queries"][q] for q in queries])
    top = [r[:K] for r in ranked]
    hit = [bool(len(t) and (item_class[t] == c).any()) for t, c in zip(top, truth, strict=True)]
    share = [float((item_class[t] == c).mean()) if len(t) else 0.0 for t, c in zip(top, truth, strict=True)]
    first = [bool(len(t) and item_class[t[0]] == c) for t, c in zip(top, truth, strict=True)]
    # the reference: the picture's nearest catalogue items by the encoder's global features (the
    # unit-length features tokenize builds the SIDs from)
    cat_feats, _ = embed_images([it.item_id for it in cat.ds.items], catalogue_image_dir(run))
    q_feats, _ = embed_images(queries, str(query_dir))
    knn = torch.from_numpy(q_feats @ cat_feats.T).topk(K, dim=-1).indices.numpy()
    report = {
        "top5_same_class": float(np.mean(hit)),
        "top1_same_class": float(np.mean(first)),
        "top5_same_class_share": float(np.mean(share)),
        "items_per_picture": float(np.mean([len(t) for t in top])),
        "images": len(queries),
        "catalogue_items": len(cat.ds.items),
        "nearest_by_features": {
            "top5_same_class": float((item_class[knn] == truth[:, None]).any(1).mean()),
            "top1_same_class": float((item_class[knn[:, 0]] == truth).mean()),
        },
        # K items drawn at random: 1 - (1 - share of the picture's class)^K, averaged over the pictures
        "chance_top5_same_class": float(np.mean([1 - (1 - (item_class == c).mean()) ** K for c in truth])),
        "chance_top1_same_class": float(np.mean([(item_class == c).mean() for c in truth])),
        "model": str(cat.model_dir),
        "beams": cfg.image_beams,
        "eval_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = run.sub("eval")
    (out / "image_rec.json").write_text(json.dumps(report, indent=2))
    return report


def format_image_table(r: dict) -> str:
    rows = [("served model", r), ("nearest by features", r["nearest_by_features"])]
    lines = [f"{r['images']} query pictures, {r['catalogue_items']} catalogue items; an item of the picture's class:"]
    lines += [
        f"  {name:<20} in the top {K} {m['top5_same_class']:.3f}, first {m['top1_same_class']:.3f}" for name, m in rows
    ]
    lines.append(
        f"  {'chance':<20} in the top {K} {r['chance_top5_same_class']:.3f}, first {r['chance_top1_same_class']:.3f}"
    )
    return "\n".join(lines)


def beam_pictures(run: RunDir, paths: list, beams: int, aligned: bool = True) -> list[list[str]]:
    """The item ids the served model ranks for each picture file (rank_picture_files): the reference
    the served answers are checked against."""
    from serve.catalogue import Catalogue

    cat = Catalogue.from_run(run.path)
    return [[cat.ds.items[i].item_id for i in r] for r in rank_picture_files(cat, paths, beams, aligned)]


def greedy_pictures(run: RunDir, paths: list) -> list[str]:
    """The item the served model names first for each picture (a one-beam search: trie-constrained
    greedy) on the prompt /v1/chat/completions builds, which has no KV-block fillers."""
    return [r[0] for r in beam_pictures(run, paths, beams=1, aligned=False)]
