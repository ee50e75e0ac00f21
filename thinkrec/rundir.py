"""A run directory: every stage writes its outputs under one folder and records itself in
manifest.json, so any stage can be re-run alone and later stages can check what exists."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from thinkrec.errors import ThinkRecError

MANIFEST = "manifest.json"


def sft_data_key(mixture: str) -> str:
    """Manifest entry of a mixture: `sft_data` for the default one, `sft_data_<name>` for the
    others, so building one never rewrites another's."""
    return "sft_data" if mixture == "default" else f"sft_data_{mixture}"


def train_key(sft_name: str) -> str:
    """Manifest entry of a trained model: `train` for `sft`, `train_<name>` for the others."""
    return "train" if sft_name == "sft" else f"train_{sft_name}"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def sub(self, name: str) -> Path:
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def manifest(self) -> dict[str, Any]:
        f = self.path / MANIFEST
        if not f.exists():
            return {"stages": {}}
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ThinkRecError(f"run directory {self.path}: {MANIFEST} is corrupt ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise ThinkRecError(f"run directory {self.path}: {MANIFEST} has no 'stages' mapping")
        return data

    def record(self, stage: str, config: Any, outputs: dict[str, str], **extra: Any) -> None:
        """Mark a stage finished, with the config it ran under and the files it wrote."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.manifest()
        cfg = _plain(config)
        data["stages"][stage] = {
            "config": cfg,
            "outputs": outputs,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.path / MANIFEST)  # atomic: a crash never leaves half a manifest

    def history_len(self, mixture: str | None = None) -> int:
        """Items per prompt of `mixture`, by default the one the run's `sft` model was trained on (a
        curriculum run's last stage trains on a named mixture, not the default one); 10 before any
        mixture exists."""
        stages = self.manifest()["stages"]
        mixture = mixture or stages.get("train", {}).get("config", {}).get("mixture", "default")
        entry = stages.get(sft_data_key(mixture)) or stages.get("sft_data", {})
        return int(entry.get("config", {}).get("history_len", 10))

    def require(self, stage: str, command: str) -> dict[str, Any]:
        """The manifest entry of an earlier stage, with its output files checked to exist."""
        if not self.path.is_dir():
            raise ThinkRecError(f"run directory {self.path} does not exist; run `thinkrec {command}` first")
        entry = self.manifest()["stages"].get(stage)
        if entry is None:
            raise ThinkRecError(
                f"run directory {self.path} has no finished '{stage}' stage; run `thinkrec {command}` first"
            )
        for name, rel in entry.get("outputs", {}).items():
            if not (self.path / rel).exists():
                raise ThinkRecError(
                    f"run directory {self.path} is incomplete: '{stage}' output {name} ({rel}) is missing;"
                    f" re-run `thinkrec {command}`"
                )
        return entry


def _plain(value: Any) -> Any:
    """Dataclass configs (or dicts of them) as JSON-ready dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
