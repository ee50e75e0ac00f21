"""Which model a run serves: the best by a recorded valid metric, never silently one that is worse.

Every RL run records, in its manifest entry, the valid-split metrics of the model it wrote and of
the SFT model it started from (rl/select.py, on users neither trained on nor tested on). The
choice: an RL model is served only if its valid NDCG@10 is above the SFT model's and its valid
P-Score@10 is not below it; among several such runs the best NDCG@10 wins. Otherwise the SFT model
is served. An RL run older than the SFT model (SFT re-trained since) is out of the running. The
choice and its reason are written to the manifest as the `served` entry; serving reads it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinkrec.rundir import RunDir

SERVED = "served"  # manifest entry
METRIC, GATE = "ndcg@10", "pscore@10"  # chosen by METRIC; GATE may not fall


def _rl_entries(stages: dict[str, Any]) -> dict[str, dict]:
    """RL runs with recorded valid metrics, newer than the SFT model they started from."""
    sft_time = stages.get("train", {}).get("finished_at", "")
    return {
        name: e
        for name, e in stages.items()
        if isinstance(e, dict) and "valid" in e and e.get("finished_at", "") >= sft_time
    }


def candidates(run: RunDir) -> dict[str, dict]:
    """name -> {"model": folder relative to the run, "valid": metrics}; the SFT model under "sft"."""
    entries = _rl_entries(run.manifest()["stages"])
    out: dict[str, dict] = {}
    for name, e in sorted(entries.items(), key=lambda kv: kv[1].get("finished_at", "")):
        out["sft"] = {"model": "sft/model", "valid": e["valid"]["sft"]}  # the newest run's measurement
        if (run.path / name / "model" / "config.json").exists():
            out[name] = {"model": f"{name}/model", "valid": e["valid"]["model"]}
    return out


def choose(cands: dict[str, dict]) -> tuple[str, str]:
    """(name of the model to serve, why), by the rule in the module docstring."""
    base = cands["sft"]["valid"]
    better = {
        n: c["valid"]
        for n, c in cands.items()
        if n != "sft" and c["valid"][METRIC] > base[METRIC] and c["valid"][GATE] >= base[GATE]
    }
    if better:
        best = max(better, key=lambda n: better[n][METRIC])
        v = better[best]
        return best, (
            f"valid {METRIC} {v[METRIC]:.4f} > sft {base[METRIC]:.4f} and {GATE} {v[GATE]:.4f} >= {base[GATE]:.4f}"
        )
    others = ", ".join(
        f"{n}: {METRIC} {c['valid'][METRIC]:.4f}, {GATE} {c['valid'][GATE]:.4f}" for n, c in cands.items() if n != "sft"
    )
    return "sft", (
        f"no RL model beats sft on the valid split (sft: {METRIC} {base[METRIC]:.4f}, {GATE} {base[GATE]:.4f};"
        f" {others or 'no RL run'})"
    )


def record_served(run: RunDir) -> dict:
    """Choose among the run's models and write the choice to the manifest."""
    cands = candidates(run)
    if "sft" not in cands:
        return {}
    name, why = choose(cands)
    entry = {"model": cands[name]["model"], "name": name, "metric": f"valid {METRIC}", "why": why}
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
