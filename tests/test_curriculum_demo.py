"""`thinkrec demo`: alignment, then activation from its model, then ECPO, one served model."""

from __future__ import annotations

import json

import pytest

from cli.main import _plan, _progress, main, parser
from serve.catalogue import Catalogue
from thinkrec.rundir import RunDir


def _trains(argv: list[str]) -> list[dict]:
    return [o for name, o in _plan(parser().parse_args(argv)) if name == "train"]


def test_the_curriculum_adds_half_the_steps_for_activation_and_fixes_each_stage_mixture():
    first, second = _trains(["demo", "--max-steps", "7", "--mixture", "activation"])
    assert first == {"mixture": "default", "sft_name": "sft_align", "init_from": "", "max_steps": 7}
    assert second == {"mixture": "activation", "sft_name": "sft", "init_from": "sft_align", "max_steps": 4}
    assert [o.get("max_steps") for o in _trains(["demo", "--max-steps", "-1"])] == [None, None]
    assert _trains(["demo", "--one-stage"]) == [{}]  # one stage on the default mixture, flags as given
    assert _plan(parser().parse_args(["eval"])) == [("eval", {})]
    # the demo's progress line: stage minutes measured on 2 cores, scaled by this machine's pace so far
    plan = _plan(parser().parse_args(["demo"]))
    assert _progress(plan, 0, 0.0) == "" and _progress(plan, 1, 60.0).startswith(", 1 min in, about ")


@pytest.mark.slow
def test_the_curriculum_demo_serves_the_activation_model_with_its_history_length(tmp_path):
    run_dir = tmp_path / "run"
    toy = "--max-users 120 --max-steps 4 --eval-every 2 --curve-users 8 --eval-users 16 --pscore-epochs 1"
    toy += " --rl-steps 2 --rl-users 8 --rl-select-users 8 --rl-eval-users 8 --chat-users 2"
    toy += " --qa-questions 4 --qa-rec-users 4 --history-len 8"
    argv = ["demo", "--run-dir", str(run_dir), "--baselines", "", *toy.split()]
    assert main(argv) == 0
    stages = RunDir(run_dir).manifest()["stages"]
    align, act = stages["train_sft_align"]["config"], stages["train"]["config"]
    assert (align["mixture"], align["init_from"], align["max_steps"]) == ("default", "", 4)
    assert (act["mixture"], act["init_from"], act["max_steps"]) == ("activation", "sft_align", 2)
    # alignment: behaviour, items and requests; activation adds QA and rationales with behaviour replay
    assert {"behaviour", "request"} <= set(stages["sft_data"]["counts"])
    assert not {"reasoning", "user_top_genre"} & set(stages["sft_data"]["counts"])
    assert {"behaviour", "request", "reasoning", "user_top_genre"} <= set(stages["sft_data_activation"]["counts"])
    assert RunDir(run_dir).history_len() == 8
    assert Catalogue.from_run(run_dir).history_len == 8
    metrics = json.loads((run_dir / "eval" / "metrics_test.json").read_text())["results"]["thinkrec"]
    assert metrics["legality"] == 1.0
    assert stages["served"]["name"] in ("sft", "rl")
    qa = json.loads((run_dir / "eval" / "qa.json").read_text())
    assert list(qa["models"]) == ["sft_align", "sft"]
    assert json.loads((run_dir / "eval" / "chat_eval.json").read_text())["users"] == 2
