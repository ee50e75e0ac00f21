"""A model soup: the element-wise mean of the weights of several fine-tunes of one base model.

Runs that start from the same extended LLM (same SID tokens, same initial rows) and differ only in
seed or a small hyper-parameter land in one basin of the loss; their mean ranks better than most
of them (Wortsman et al., 2022, "Model soups"). Averaging costs one pass over the weights and
serves at the price of one model, unlike an ensemble. Which runs go in is chosen on the valid
split by eval/soup.py; this module only checks that the folders can be averaged and writes the mean.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from thinkrec.errors import ThinkRecError
from tokenizer_ext.sid import MODEL_SID_FILE

# files that must be identical across ingredients: the same vocabulary, SIDs and architecture (the
# config up to what only says how it was saved or run: training saves use_cache off)
MUST_MATCH = (MODEL_SID_FILE, "tokenizer.json", "config.json")
CONFIG_FREE = ("torch_dtype", "dtype", "transformers_version", "use_cache", "_name_or_path")


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files, relative to it (the LLM's, and the projector of a vision model)."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*.safetensors"))


def check_ingredients(folders: list[Path]) -> list[Path]:
    """Named errors for anything that would make the mean meaningless; returns the weight files."""
    if not folders:
        raise ThinkRecError("a soup needs at least one model folder")
    first = folders[0]
    for folder in folders:
        if not (folder / "config.json").exists():
            raise ThinkRecError(f"{folder} is no model folder (no config.json)")
        if (folder / "adapter_config.json").exists():
            raise ThinkRecError(f"{folder} holds a LoRA adapter; soups average merged models (train saves them merged)")
    files = weight_files(first)
    if not files:
        raise ThinkRecError(f"{first} holds no *.safetensors weights")
    for folder in folders[1:]:
        for name in MUST_MATCH:
            a, b = first / name, folder / name
            if a.exists() != b.exists() or (a.exists() and _content(a) != _content(b)):
                raise ThinkRecError(
                    f"{folder} and {first} differ in {name}: a soup needs runs of one tokenizer and one base model"
                )
        if weight_files(folder) != files:
            raise ThinkRecError(f"{folder} and {first} hold different weight files")
    return files


def _content(path: Path):
    if path.name != "config.json":
        return path.read_bytes()
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in CONFIG_FREE}


@torch.no_grad()
def average_models(folders: list[Path], out: Path) -> Path:
    """Write the mean of the folders' weights to `out` (kept in the first model's dtypes, summed in
    float32), with the first folder's tokenizer, config and SID index beside it."""
    folders = [Path(f) for f in folders]
    files = check_ingredients(folders)
    out = Path(out)
    if out.resolve() in {f.resolve() for f in folders}:
        raise ThinkRecError(f"the soup's folder {out} is one of its ingredients")
    tmp = out.with_name(out.name + ".partial")  # a crash mid-write leaves no half soup at `out`
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folders[0], tmp, ignore=shutil.ignore_patterns("*.safetensors"))
    try:
        for rel in files:
            means, dtypes, meta = _sum(folders[0] / rel, None)
            for folder in folders[1:]:
                _sum(folder / rel, means)
            tensors = {k: (v / len(folders)).to(dtypes[k]).contiguous() for k, v in means.items()}
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp / rel), metadata=meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _sum(path: Path, into: dict[str, torch.Tensor] | None):
    """Add a safetensors file's tensors into `into` (or start the sums from it)."""
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if into is not None and keys != set(into):
            raise ThinkRecError(f"{path} holds other tensors than the first ingredient's")
        if into is None:
            tensors = {k: f.get_tensor(k) for k in keys}
            return {k: t.float() for k, t in tensors.items()}, {k: t.dtype for k, t in tensors.items()}, f.metadata()
        for k in keys:
            t = f.get_tensor(k)
            if t.shape != into[k].shape:
                first = tuple(into[k].shape)
                raise ThinkRecError(f"{path}: {k} has shape {tuple(t.shape)}, the first ingredient's {first}")
            into[k] += t.float()
    return into, None, None
