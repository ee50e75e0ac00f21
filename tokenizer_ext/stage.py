"""Stage `tokenize`: item embeddings -> (collaborative alignment) -> RQ-Kmeans -> SID index ->
extended LLM folder, all written into the run directory."""

from __future__ import annotations

import json

import numpy as np

from backbone.llm import cache_dir, resolve_base_model
from thinkrec.config import ModelConfig, TokenizerConfig
from thinkrec.data import load_prepared
from thinkrec.rundir import RunDir
from tokenizer_ext.align import align_embeddings
from tokenizer_ext.embed import embed_images, embed_texts, with_images
from tokenizer_ext.extend_llm import extend_llm
from tokenizer_ext.rq_kmeans import auto_codebook_size, codebook_report, fit_rq_kmeans
from tokenizer_ext.sid import MODEL_SID_FILE, SIDIndex


def run_tokenize(cfg: TokenizerConfig, model_cfg: ModelConfig, run: RunDir) -> dict:
    ds = load_prepared(run)
    out = run.sub("tokenizer")
    content = embed_texts([it.text() for it in ds.items], cfg.embed_model, cache_dir() / "embeddings")
    report: dict = {}
    if cfg.image_dir:
        images, has = embed_images([it.item_id for it in ds.items], cfg.image_dir)
        content = with_images(content, images, cfg.image_weight)
        report["items_with_images"] = int(has.sum())
    report["embedding_dim"] = int(content.shape[1])
    x = content
    if cfg.collab_align:
        # train sequences only: the valid/test targets must not leak into the codes
        x = align_embeddings(
            content,
            [u.train_items() for u in ds.users],
            cfg.collab_weight,
            cfg.collab_dim,
            cfg.collab_source,
            cfg.collab_epochs,
            cache_dir() / "embeddings",
        )
    np.save(out / "item_embeddings.npy", x)

    k = cfg.codebook_size or auto_codebook_size(len(ds.items), cfg.levels)
    rq = fit_rq_kmeans(x, cfg.levels, k, cfg.kmeans_iters, cfg.seed, cfg.balanced, cfg.fit_sample)
    report.update(codebook_report(x, rq))
    index = SIDIndex([tuple(int(c) for c in row) for row in rq.codes], cfg.levels, k)
    index.save(out / "sid_index.json")
    np.savez(out / "codebooks.npz", *rq.codebooks)

    base = resolve_base_model(model_cfg.base_model)
    report["llm"] = extend_llm(base, index, [it.title for it in ds.items], run.path / "model_base")
    report["llm"]["base_model"] = str(base)
    index.save(run.path / "model_base" / MODEL_SID_FILE)  # the model folder serves on its own
    (out / "report.json").write_text(json.dumps(report, indent=2))
    run.record(
        "tokenize",
        {"tokenizer": cfg, "model": model_cfg},
        {"sid_index": "tokenizer/sid_index.json", "report": "tokenizer/report.json", "model": "model_base/config.json"},
    )
    return report


def load_index(run: RunDir) -> SIDIndex:
    run.require("tokenize", "tokenize")
    return SIDIndex.load(run.path / "tokenizer" / "sid_index.json")


def format_report(report: dict) -> str:
    lines = [
        f"RQ-Kmeans: {report['items']} items, {report['levels']} levels x {report['codebook_size']} codes, "
        f"{report['collisions_resolved']} collisions re-homed",
        f"  reconstruction loss {report['reconstruction_loss']:.4f}"
        f" (relative {report['relative_reconstruction_loss']:.4f})",
        f"  {'level':>5} {'utilisation':>11} {'entropy':>8} (max {report['max_entropy']:.3f})",
    ]
    for lv in report["per_level"]:
        lines.append(f"  {lv['level']:>5} {lv['utilisation']:>11.4f} {lv['entropy']:>8.4f}")
    return "\n".join(lines)
