"""Which model a run serves: the best by a recorded valid metric, never silently one that is worse.

Every RL run records, in its manifest entry, the valid-split metrics of the model it wrote and of
the SFT model it started from (`rl_init`: `sft`, or another trained stage such as `sft_act`;
rl/select.py, on users neither trained on nor tested on). The choice: an RL model is served only if
its valid NDCG@10 is above that SFT model's and its valid P-Score@10 is not below it; among several
such runs (from the same SFT model as the newest run) the best NDCG@10 wins. Otherwise the SFT
model they started from is served. An RL run older than its SFT model (re-trained since) is out of
the running. The choice and its reason are written to the manifest as the `served` entry; serving
reads it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinkrec.rundir import RunDir, train_key

SERVED = "served"  # manifest entry
METRIC, GATE = "ndcg@10", "pscore@10"  # chosen by METRIC; GATE may not fall


def _init_of(entry: dict) -> str:
    """The trained model an RL run started from (runs recorded before `rl_init` existed: `sft`)."""
    return entry.get("config", {}).get("rl_init", "sft")


def _rl_entries(stages: dict[str, Any]) -> dict[str, dict]:
    """RL runs with recorded valid metrics, newer than the SFT model they started from."""
    return {
        name: e
        for name, e in stages.items()
        if isinstance(e, dict)
        and "valid" in e
        and e.get("finished_at", "") >= stages.get(train_key(_init_of(e)), {}).get("finished_at", "")
    }


def candidates(run: RunDir) -> dict[str, dict]:
    """name -> {"model": folder relative to the run, "valid": metrics}. The SFT model the newest RL
    run started from is under "sft" (with its own name under "name"), with the RL runs from it."""
    entries = _rl_entries(run.manifest()["stages"])
    if not entries:
        return {}
    newest = max(entries.values(), key=lambda e: e.get("finished_at", ""))
    init = _init_of(newest)
    out = {"sft": {"model": f"{init}/model", "valid": newest["valid"]["sft"], "name": init}}
    for name, e in entries.items():
        if _init_of(e) == init and (run.path / name / "model" / "config.json").exists():
            out[name] = {"model": f"{name}/model", "valid": e["valid"]["model"]}
    return out


def started_from(run: RunDir) -> str | None:
    """The trained model the run's newest RL run started from, as its manifest records it."""
    return candidates(run).get("sft", {}).get("name")


def choose(cands: dict[str, dict]) -> tuple[str, str]:
    """(name of the model to serve, why), by the rule in the module docstring."""
    base, label = cands["sft"]["valid"], cands["sft"].get("name", "sft")
    better = {
        n: c["valid"]
        for n, c in cands.items()
        if n != "sft" and c["valid"][METRIC] > base[METRIC] and c["valid"][GATE] >= base[GATE]
    }
    if better:
        best = max(better, key=lambda n: better[n][METRIC])
        v = better[best]
        return best, (
            f"valid {METRIC} {v[METRIC]:.4f} > {label} {base[METRIC]:.4f} and {GATE} {v[GATE]:.4f} >= {base[GATE]:.4f}"
        )
    others = ", ".join(
        f"{n}: {METRIC} {c['valid'][METRIC]:.4f}, {GATE} {c['valid'][GATE]:.4f}" for n, c in cands.items() if n != "sft"
    )
    return "sft", (
        f"no RL model beats {label} on the valid split ({label}: {METRIC} {base[METRIC]:.4f}, {GATE} {base[GATE]:.4f};"
        f" {others or 'no RL run'})"
    )


def record_served(run: RunDir) -> dict:
    """Choose among the run's models and write the choice to the manifest."""
    cands = candidates(run)
    if "sft" not in cands:
        return {}
    name, why = choose(cands)
    model, shown = cands[name]["model"], cands[name].get("name", name)
    entry = {"model": model, "name": shown, "metric": f"valid {METRIC}", "why": why}
    run.record(SERVED, {"metric": METRIC, "gate": GATE}, {"model": f"{entry['model']}/config.json"}, **entry)
    return entry


def served_model_dir(run: RunDir) -> Path:
    """The model folder to serve: the recorded choice, else the SFT model, else the extended base.
    An RL model is never served without a recorded valid comparison."""
    entry = run.manifest()["stages"].get(SERVED)
    options = [entry["model"]] if entry and "model" in entry else []
    options += ["sft/model", "model_base"]
    paths = [run.path / o for o in options]
    return next((p for p in paths if (p / "config.json").exists()), paths[-1])
