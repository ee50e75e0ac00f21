"""Stage `train-vision`: the served model learns to read pictures, on a catalogue whose items have
images (`thinkrec data --dataset digits`, `thinkrec tokenize --image-dir ...`).

The task is "more like this": a user turn with a picture and a few words, answered by the SID of
the item the picture shows. The SIDs were built from the items' image features, so items that
look alike share code prefixes, and a new picture (one that is no item) is answered by the SIDs of
items that look like it. The VisionLM of model/vision.py does the reading: the frozen encoder's
features go through the projector into `<image>` slots of the prompt. The projector and the LLM
learn together (`--no-train-llm`: the projector alone, LLaVA's first stage).

The model is written where serving looks (RUN/sft/model), with the projector and vision.json beside
it: `thinkrec serve RUN` then takes pictures (serve/vision.py). Checkpoints every `save_steps` in
RUN/sft/checkpoints; a rerun resumes from the newest (`--no-resume` starts over).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from backbone.llm import load_causal_lm
from model.vision import IMAGE_TOKEN, Projector, VisionLM, add_image_token, expand_image_tokens, train_projector
from thinkrec.config import VisionConfig
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import MODEL_SID_FILE, SIDIndex, code_token


def picture_turn(prompt: str, grid: int) -> dict:
    """The user turn that carries a picture: its image slots first, then the words, as vLLM's chat
    renderer lays out an embeddings part and a text part (placeholder, newline, text)."""
    return {"role": "user", "content": expand_image_tokens(f"{IMAGE_TOKEN}\n{prompt}", grid * grid)}


def image_paths(folder: str | Path, names: list[str]) -> list[Path]:
    """`<folder>/<name>.jpg|.jpeg|.png` for each name; a name without an image is an error."""
    from tokenizer_ext.embed import image_file

    paths = [image_file(Path(folder), name) for name in names]
    missing = [name for name, path in zip(names, paths, strict=True) if path is None]
    if missing:
        raise ThinkRecError(f"no image {missing[0]}.jpg/.jpeg/.png in {folder} ({len(missing)} missing)")
    return paths


def encode_pictures(paths: list[Path], grid: int) -> torch.Tensor:
    """(n, grid**2, 1280) features of the frozen encoder."""
    from PIL import Image

    from backbone.image import VisionEncoder

    encoder = VisionEncoder(grid=grid)
    return encoder([Image.open(p) for p in paths])


def catalogue_image_dir(run: RunDir) -> str:
    """The image folder the run's SIDs were built from (`tokenize --image-dir`)."""
    entry = run.require("tokenize", "tokenize --image-dir DIR")
    folder = entry.get("config", {}).get("tokenizer", {}).get("image_dir", "")
    if not folder:
        raise ThinkRecError(
            "this run's SIDs were built without images: train-vision needs a catalogue with pictures "
            "(thinkrec data --dataset digits; thinkrec tokenize --image-dir RUN/data/images)"
        )
    return folder


@torch.no_grad()
def codes_from_pictures(llm, tok, index: SIDIndex, features: torch.Tensor, seed: int) -> None:
    """Start each SID code token from the pictures of its items.

    tokenize starts a code token at the mean title embedding of its items; titles that say nothing
    ("Image 17") give every code of a level the same row (cosine 0.996 on digits). With tied
    embeddings the loss then has no gradient towards the picture (it moves the hidden state along
    sum_c (p_c - y_c) e_c, which is 0 when all e_c are equal), and the model learns the codes'
    frequencies only. Here a code's row is the mean of its items' standardised picture features
    under a fixed random projection (which keeps their angles), at the norm of an ordinary token's
    row: codes of alike pictures start alike, and every code is distinct."""
    emb = llm.get_input_embeddings().weight
    vocab = tok.get_vocab()
    flat = features.mean(1).float()  # (items, feature_dim): the picture's global feature
    z = (flat - flat.mean(0)) / flat.std(0).clamp(min=1e-4)
    rng = torch.Generator().manual_seed(seed)
    projected = z @ torch.randn(z.shape[1], emb.shape[1], generator=rng)
    code_ids = {vocab[code_token(lv, c)] for lv in range(index.levels) for c in range(index.codebook_size)}
    plain = [i for i in range(emb.shape[0]) if i not in code_ids]
    norm = emb[plain].norm(dim=-1).mean()
    codes = torch.tensor(index.codes)
    for lv in range(index.levels):
        for c in range(index.codebook_size):
            members = codes[:, lv] == c
            if members.any():
                row = projected[members].mean(0)
                emb[vocab[code_token(lv, c)]] = (row / row.norm().clamp(min=1e-6) * norm).to(emb.dtype)


def run_train_vision(cfg: VisionConfig, run: RunDir) -> dict:
    from thinkrec.data import load_prepared
    from tokenizer_ext.stage import load_index

    if cfg.grid < 1 or cfg.steps < 1:
        raise ThinkRecError("--grid and --steps must be positive")
    ds, index = load_prepared(run), load_index(run)
    paths = image_paths(catalogue_image_dir(run), [it.item_id for it in ds.items])
    features = encode_pictures(paths, cfg.grid)
    torch.manual_seed(cfg.seed)  # the projector's and the picture token's first weights, whatever ran before
    tok, llm = load_causal_lm(run.path / "model_base")
    vlm = VisionLM(llm, Projector(features.shape[-1], llm.config.hidden_size), add_image_token(tok, llm))
    vlm.projector.standardise(features)  # by the catalogue's pictures; saved with the projector
    codes_from_pictures(llm, tok, index, features, cfg.seed)
    samples = [
        {
            "messages": [picture_turn(cfg.prompt, cfg.grid), {"role": "assistant", "content": index.sid(i)}],
            "image_features": features[i],
        }
        for i in range(len(ds.items))
    ]
    checkpoints = run.sub("sft") / "checkpoints"
    if not cfg.resume and checkpoints.is_dir():
        shutil.rmtree(checkpoints)
    history, resumed = train_projector(
        vlm, tok, samples, cfg.steps, cfg.learning_rate, cfg.batch_size, cfg.seed, cfg.train_llm, cfg.vision_bf16,
        checkpoints, cfg.save_steps,
    )  # fmt: skip
    out = run.sub("sft") / "model"
    vlm.save(out, tok, grid=cfg.grid, prompt=cfg.prompt)
    index.save(out / MODEL_SID_FILE)
    losses = [h["loss"] for h in history if "loss" in h]
    summary = {
        "pictures": len(samples),
        "steps": cfg.steps,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "resumed_from": resumed,
    }
    run.record("train", cfg, {"model": "sft/model/config.json", "vision": "sft/model/vision.json"}, summary=summary)
    return summary


def load_vision_model(model_dir: Path) -> tuple[object, VisionLM, dict]:
    """Tokenizer, VisionLM and its vision.json of a model folder written by train-vision."""
    import json

    from model.vision import VISION_FILE

    if not (model_dir / VISION_FILE).exists():
        raise ThinkRecError(f"{model_dir} reads no images (no {VISION_FILE}): train it with `thinkrec train-vision`")
    tok, vlm = VisionLM.load(model_dir)
    return tok, vlm.eval(), json.loads((model_dir / VISION_FILE).read_text())
