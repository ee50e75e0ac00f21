"""Stage `add-items`: new items join a tokenized catalogue without retraining anything.

A new item is embedded as tokenize embedded the catalogue (the same text encoder over the config's
content template, and the same images folder when the SIDs were built with pictures). It has no
interactions yet, so where the SIDs are collaborative-first its collaborative half is borrowed: the
similarity-weighted mean of the collaborative vectors of the `neighbours` catalogue items nearest
in content. Its SID comes from the fixed codebooks (at each level the nearest centroid; a taken code
is replaced by the nearest free one), so the SID tokens, the LLM and every trained model stay as
they are: the new SIDs only join the index, the prefix tree the decoding is held to, and the
catalogue the server answers from (after a restart). A P-Score trained before scores them by
content until it is retrained (rl/pscore.py). Nothing is half-written: every file is written beside its old
copy first and the copies are swapped in together at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from backbone.llm import cache_dir
from thinkrec.config import AddItemsConfig
from thinkrec.data import load_prepared
from thinkrec.data.loader import new_items
from thinkrec.data.schema import schema_from_dict
from thinkrec.data.stage import load_run_schema
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.align import normalise_rows
from tokenizer_ext.embed import embed_images, embed_texts, with_images
from tokenizer_ext.rq_kmeans import assign_codes
from tokenizer_ext.sid import MODEL_SID_FILE, SIDIndex
from tokenizer_ext.stage import load_index

SHARPNESS = 0.05  # softmax temperature over the neighbours' cosines: the nearest count most


def borrowed_collaborative(content_new: np.ndarray, catalogue: np.ndarray, dim: int, k: int) -> np.ndarray:
    """The collaborative half for items without interactions: a softmax-weighted mean (by content
    cosine) of the k nearest catalogue items' halves, brought back to their usual length (a mean of
    unlike directions is short, and a short half would leave the content alone to pick the code)."""
    sims = normalise_rows(content_new) @ catalogue[:, :dim].T  # the catalogue's content half is unit length
    k = min(k, len(catalogue))
    near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    near_sims = np.take_along_axis(sims, near, 1)
    weights = np.exp((near_sims - near_sims.max(1, keepdims=True)) / SHARPNESS)
    halves = catalogue[:, dim:]
    mean = (weights[..., None] * halves[near]).sum(1) / weights.sum(1, keepdims=True)
    usual = np.linalg.norm(halves, axis=1).mean()
    return mean * (usual / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12))


def run_add_items(cfg: AddItemsConfig, run: RunDir) -> dict:
    if not cfg.items_file:
        raise ThinkRecError("--items-file names the file of new items")
    if cfg.neighbours < 1:
        raise ThinkRecError("--neighbours must be >= 1")
    raw = load_run_schema(run)
    if raw is None:
        raise ThinkRecError(f"run {run.path} has no data set config (data/schema.json): add-items needs one")
    ds, index = load_prepared(run), load_index(run)
    tok_cfg = run.manifest()["stages"]["tokenize"]["config"]["tokenizer"]
    added = new_items(schema_from_dict(raw), Path(cfg.items_file), {it.item_id for it in ds.items}, len(ds.items))

    content = embed_texts([it.text() for it in added], tok_cfg["embed_model"], cache_dir() / "embeddings")
    if tok_cfg.get("image_dir"):
        images, _ = embed_images([it.item_id for it in added], tok_cfg["image_dir"])
        content = with_images(content, images, tok_cfg["image_weight"])
    out = run.path / "tokenizer"
    catalogue = np.load(out / "item_embeddings.npy")
    if tok_cfg.get("collab_align"):
        dim = content.shape[1]
        x = np.concatenate(
            [normalise_rows(content), borrowed_collaborative(content, catalogue, dim, cfg.neighbours)], 1
        )
    else:
        x = content
    if x.shape[1] != catalogue.shape[1]:
        raise ThinkRecError(f"new items embed to {x.shape[1]} dims, the catalogue to {catalogue.shape[1]}")
    with np.load(out / "codebooks.npz") as z:
        books = [z[f"arr_{lv}"] for lv in range(len(z.files))]
    codes, moved = assign_codes(x.astype(np.float32), books, index.codes)
    grown = SIDIndex([*index.codes, *(tuple(int(c) for c in row) for row in codes)], index.levels, index.codebook_size)

    # every file beside its old copy first, then all swapped in
    staged: list[tuple[Path, Path]] = []

    def stage(path: Path, write) -> None:
        tmp = path.with_name(path.name + ".new")
        write(tmp)
        staged.append((tmp, path))

    def save_embeddings(path: Path) -> None:
        with path.open("wb") as f:  # np.save on a path would add ".npy" to the staged name
            np.save(f, np.concatenate([catalogue, x]).astype(np.float32))

    stage(out / "item_embeddings.npy", save_embeddings)
    stage(out / "sid_index.json", grown.save)
    for model_file in sorted(run.path.glob(f"**/{MODEL_SID_FILE}")):  # every model folder serves on its own
        stage(model_file, grown.save)
    items_path = run.path / "data" / "items.jsonl"
    lines = items_path.read_text() + "".join(json.dumps(asdict(it)) + "\n" for it in added)
    stage(items_path, lambda p: p.write_text(lines))
    for tmp, path in staged:
        os.replace(tmp, path)

    report = {
        "added": len(added),
        "catalogue_items": len(grown.codes),
        "codes_moved_off_a_taken_one": moved,
        "new": {it.item_id: grown.sid(it.idx) for it in added[:20]},
    }
    run.record("add_items", cfg, {"items": "data/items.jsonl", "sid_index": "tokenizer/sid_index.json"}, report=report)
    return report
