"""`thinkrec`: one command, a subcommand per stage, `thinkrec demo` for all of them in order.

Every field of the stage's config dataclasses is a flag (`--codebook-size 64`, `--no-lora`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from thinkrec.config import (
    AddItemsConfig,
    ChatEvalConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PScoreConfig,
    QAEvalConfig,
    RLConfig,
    ServeConfig,
    SFTDataConfig,
    SoupConfig,
    TokenizerConfig,
    TrainConfig,
    VisionConfig,
)
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir

STAGE_CONFIGS: dict[str, tuple[type, ...]] = {
    "data": (DataConfig,),
    "tokenize": (TokenizerConfig, ModelConfig),
    "add-items": (AddItemsConfig,),  # new items into a tokenized catalogue, nothing retrained
    # the preference model needs only data and item embeddings; sft-data reads its scores
    "pscore": (PScoreConfig,),
    "sft-data": (SFTDataConfig,),
    "train": (TrainConfig,),
    "eval": (EvalConfig,),
    "soup": (SoupConfig,),
    "rl": (RLConfig,),
    "rl-eval": (RLConfig,),
    "qa-eval": (QAEvalConfig,),
    "reasoning-eval": (RLConfig,),
    "chat-eval": (ChatEvalConfig,),
    "train-vision": (VisionConfig,),
    "image-eval": (VisionConfig,),
}
# QA and reasoning need a model trained on the QA / reasoning mixtures first (docs/training.md)
# (the vision stages need a catalogue with pictures: --dataset digits, docs/images.md)
# (a soup needs several trained runs of one tokenizer: docs/measurements.md "Best recipe")
DEMO_STAGES = [
    s
    for s in STAGE_CONFIGS
    if s not in ("add-items", "soup", "qa-eval", "reasoning-eval", "train-vision", "image-eval")
]
# The demo's departures from the stage defaults, sized for 2 CPU cores: 250 LoRA steps (300 by
# default; the curriculum's activation stage adds half as many) with a learning curve on 200 valid
# users every 125 steps that also picks the best-on-valid checkpoint; SASRec alone as the learned
# baseline (GRU4Rec adds about as much again; `thinkrec eval` trains both), stopped after 3 valid
# checks without a gain (5 by default); the chat evaluation on 16 of the 94 held-out users; the QA
# evaluation on 16 questions a task and 16 users.
DEMO_DEFAULTS: dict[str, Any] = {
    "max_steps": 250,
    "eval_every": 125,
    "curve_users": 200,
    "baselines": "sasrec",
    "baseline_patience": 3,
    "chat_users": 16,
    "qa_questions": 16,
    "qa_rec_users": 16,
}
# what `thinkrec demo --help` lists: the demo's own sizes and what a first run changes
DEMO_SHOWN = {"dataset", "max_users", "base_model", "seed", *DEMO_DEFAULTS}
# `thinkrec demo`: OneRec-Think's stages, one served model. First alignment on the default mixture
# (behaviour, item <-> text, requests) for all the demo's steps, then reasoning activation (QA,
# rationales, requests, behaviour replay) from its model for half as many more, named `sft` so that
# eval, ECPO, the chat evaluation and `serve` use it. Measured at the demo's size (docs/measurements.md): this keeps
# the plain Recall@10 above the one-stage model's, where splitting the same steps between the two
# stages lost 0.02. `--one-stage` runs DEMO_STAGES instead. Overrides here win over the user's flags.
DEMO_CURRICULUM: list[tuple[str, dict[str, Any]]] = [
    ("data", {}),
    ("tokenize", {}),
    ("pscore", {}),
    ("sft-data", {"mixture": "default"}),
    ("train", {"mixture": "default", "sft_name": "sft_align", "init_from": ""}),
    ("sft-data", {"mixture": "activation"}),
    ("train", {"mixture": "activation", "sft_name": "sft", "init_from": "sft_align"}),
    ("eval", {}),
    ("rl", {}),
    ("rl-eval", {}),
    ("chat-eval", {}),
    ("qa-eval", {"qa_models": "sft_align,sft"}),
]
HELP = {
    "data": "read a data set (a shipped one or a YAML config over your files), k-core filter, leave-last-out split",
    "tokenize": "item embeddings -> RQ-Kmeans SIDs -> SID index, trie, extended LLM",
    "add-items": "new items join a tokenized catalogue: SIDs from the fixed codebooks, nothing retrained",
    "sft-data": "build a training mixture: behaviour, item alignment, user-QA, video-QA, reasoning",
    "train": "SFT the extended LLM (LoRA or full), with checkpoints and resume",
    "eval": "Recall/NDCG/legality of the LLM against popularity and SASRec",
    "soup": "average the weights of several runs' models (greedy model soup chosen on valid NDCG@10)",
    "pscore": "train the P-Score preference model (the RL reward), AUC per head",
    "rl": "ECPO alignment of the SFT model (P-Score, hit/rank, format, business rule; SFT term), chosen on valid;"
    " --reasoning: on rollouts that write a rationale first",
    "rl-eval": "before/after RL on held-out users: Recall/NDCG, P-Score, flagged share, legality, served model",
    "qa-eval": "QA accuracy per task on held-out users/items; recommendation with and without reasoning",
    "reasoning-eval": "reasoning-first vs direct on held-out users, before and after reasoning RL",
    "chat-eval": "does the chat listen: request satisfaction per kind, Recall with a request, two turns, replies",
    "train-vision": "the served model learns pictures: 'more like this' on an image catalogue (--dataset digits)",
    "image-eval": "'more like this' with held-out pictures: is an item of the picture's class in the top 5",
    "demo": "run every stage in order on the defaults",
    "serve": "serve a run through vLLM's OpenAI-compatible server (trie-constrained SIDs, chat page)",
    "chat": "chat with a running server in the terminal",
}


def _add_flags(parser: argparse.ArgumentParser, cls: type, taken: set[str], shown: set[str] | None = None) -> None:
    """One flag per field; a name shared by several configs (e.g. seed) gets one flag for all.
    With `shown`, only those fields are listed by --help (the others are accepted all the same)."""
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in taken:
            continue
        taken.add(f.name)
        flag = "--" + f.name.replace("_", "-")
        # the field's help text (config.py) and its default; argparse formats help with %
        default = DEMO_DEFAULTS.get(f.name, f.default) if shown is not None else f.default
        text = f"{f.metadata.get('help', '')} (default: {default!r})".strip().replace("%", "%%")
        if shown is not None and f.name not in shown:
            text = argparse.SUPPRESS
        if f.type in ("bool", bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            group.add_argument(flag, dest=f.name, type=typ, default=None, help=text)


def _build(cls: type, args: argparse.Namespace) -> Any:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**given)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinkrec", description="ThinkRec: generative recommendation with Semantic IDs")
    sub = p.add_subparsers(dest="command", required=True)
    for name in [*STAGE_CONFIGS, "demo"]:
        sp = sub.add_parser(name, help=HELP[name], description=HELP[name])
        sp.add_argument("--run-dir", default="runs/demo", help="run directory (default: runs/demo)")
        classes = STAGE_CONFIGS.get(name) or tuple(c for cs in STAGE_CONFIGS.values() for c in cs)
        taken: set[str] = set()
        for cls in classes:  # the demo takes every stage's flags but lists only its own
            _add_flags(sp, cls, taken, DEMO_SHOWN if name == "demo" else None)
        if name == "demo":
            sp.epilog = (
                "every stage's flags are taken too (thinkrec <stage> --help lists them); the demo's own sizes above"
            )
            sp.add_argument(
                "--one-stage",
                action="store_true",
                help="train once on the default mixture instead of the curriculum (alignment for --max-steps,"
                " then activation with QA, reasoning and requests for half as many more)",
            )
        if name == "eval":
            sp.add_argument(
                "--model-dir", default="", help="evaluate this HF folder instead of the run's trained model"
            )
        if name == "data":
            sp.add_argument(
                "--check",
                action="store_true",
                help="read the data set, print its statistics and problems, and write nothing",
            )
            sp.add_argument(
                "--export-recbole",
                default="",
                metavar="DIR",
                help="also write the filtered data set as RecBole atomic files into DIR (for RecBole's baselines)",
            )
    sp = sub.add_parser("serve", help=HELP["serve"], description=HELP["serve"])
    sp.add_argument("run_dir", nargs="?", default="runs/demo", help="run directory (default: runs/demo)")
    _add_flags(sp, ServeConfig, set())
    sp.epilog = "flags go before or after RUN_DIR; only what follows `--` goes to vLLM as it is"
    sp = sub.add_parser("chat", help=HELP["chat"], description=HELP["chat"])
    sp.add_argument("--url", default="http://127.0.0.1:8000", help="server address")
    sp.add_argument("--user-id", required=True, help="the data set's user id whose history the chat starts from")
    sp.add_argument("--k", type=int, default=3, help="items per answer")
    sp.add_argument("--api-key", default=None, help="the server's API key (default: THINKREC_API_KEY)")
    return p


# the evaluation stages that print a table and write one report: (module, run, format, config, file)
REPORTS: dict[str, tuple[str, str, str, type, str]] = {
    "rl-eval": ("eval.rl_report", "run_rl_eval", "format_rl_table", RLConfig, "rl_report.json"),
    "reasoning-eval": (
        "eval.reasoning_report", "run_reasoning_eval", "format_reasoning_table", RLConfig, "reasoning_report.json"
    ),
    "chat-eval": ("eval.chat", "run_chat_eval", "format_chat_table", ChatEvalConfig, "chat_eval.json"),
    "image-eval": ("eval.images", "run_image_eval", "format_image_table", VisionConfig, "image_rec.json"),
    "qa-eval": ("eval.qa", "run_qa_eval", "format_qa_table", QAEvalConfig, "qa.json"),
}  # fmt: skip


def _stage(name: str, args: argparse.Namespace, run: RunDir) -> None:
    from eval.stage import format_table, run_eval
    from model.train import run_train
    from sft_data.stage import run_sft_data
    from thinkrec.data import prepare
    from tokenizer_ext.stage import format_report, run_tokenize

    t = time.time()
    print(f"== {name} ==", flush=True)
    if name == "data":
        from thinkrec.data.stage import check, export_recbole, schema_for

        cfg = _build(DataConfig, args)
        if getattr(args, "export_recbole", ""):
            schema_for(cfg)  # a data set that cannot be exported is refused before anything is written
        if getattr(args, "check", False):
            print(check(cfg))
            return
        print(json.dumps(prepare(cfg, run).stats(), indent=2))
        if getattr(args, "export_recbole", ""):
            for path in export_recbole(cfg, Path(args.export_recbole)):
                print(f"wrote {path}")
    elif name == "tokenize":
        print(format_report(run_tokenize(_build(TokenizerConfig, args), _build(ModelConfig, args), run)))
    elif name == "add-items":
        from tokenizer_ext.add_items import run_add_items

        print(json.dumps(run_add_items(_build(AddItemsConfig, args), run), indent=2))
    elif name == "sft-data":
        print(run_sft_data(_build(SFTDataConfig, args), run))
    elif name == "train":
        from eval.curve import curve_callbacks

        cfg = _build(TrainConfig, args)
        print(run_train(cfg, run, curve_callbacks(cfg, run)))
    elif name == "eval":
        report = run_eval(_build(EvalConfig, args), run, getattr(args, "model_dir", ""))
        print(format_table(report))
        print(f"written: {run.path / 'eval' / ('metrics_' + report['split'] + '.json')}")
    elif name == "soup":
        from eval.soup import format_soup_table, run_soup

        report = run_soup(_build(SoupConfig, args), run)
        print(format_soup_table(report))
        print(f"written: {run.path / 'eval' / 'soup.json'}")
        print(f"test it with `thinkrec eval --model-dir {report['soup']}`; serve it with `--model-dir` too")
    elif name == "pscore":
        from rl.stage import run_pscore

        print(json.dumps(run_pscore(_build(PScoreConfig, args), run), indent=2))
    elif name == "rl":
        from rl.stage import run_rl

        print(run_rl(_build(RLConfig, args), run))
    elif name in REPORTS:
        module, run_fn, format_fn, config, written = REPORTS[name]
        stage = importlib.import_module(module)
        print(getattr(stage, format_fn)(getattr(stage, run_fn)(_build(config, args), run)))
        print(f"written: {run.path / 'eval' / written}")
    elif name == "train-vision":
        from model.vision_train import run_train_vision

        print(run_train_vision(_build(VisionConfig, args), run))
    print(f"== {name} done in {time.time() - t:.0f}s ==", flush=True)


# minutes per demo stage from a fresh clone on 2 AMD EPYC (AVX2) cores (2026-12-07, commit 163c560,
# the demo's sizes): what the progress line's estimate of the time left is scaled from
DEMO_MINUTES = {"data": 0.1, "tokenize": 0.6, "pscore": 1.8, "sft-data": 0.2, "train": 17.3, "eval": 11.8,
                "rl": 8.5, "rl-eval": 4.9, "chat-eval": 4.1, "qa-eval": 2.8}  # fmt: skip


def _progress(plan: list[tuple[str, dict]], done: int, elapsed: float) -> str:
    """ ", 12 min in, about 40 left": the measured stage minutes, scaled by this machine's pace so far."""
    if done == 0:
        return ""
    minutes = [DEMO_MINUTES.get(name, 1.0) for name, _ in plan]
    pace = elapsed / 60 / max(sum(minutes[:done]), 1e-6)
    return f", {elapsed / 60:.0f} min in, about {pace * sum(minutes[done:]):.0f} left"


def _plan(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The stages a command runs, each with the flags it overrides."""
    if args.command != "demo":
        return [(args.command, {})]
    if args.one_stage:
        return [(name, {}) for name in DEMO_STAGES]
    steps = args.max_steps if args.max_steps is not None else TrainConfig.max_steps
    # alignment trains all the steps, activation half as many more (rounded up); -1 (by epochs) stays
    split = {"sft_align": {"max_steps": steps}, "sft": {"max_steps": (steps + 1) // 2}} if steps > 0 else {}
    return [(name, (o | split.get(o.get("sft_name"), {})) if name == "train" else o) for name, o in DEMO_CURRICULUM]


def _split_vllm_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """`thinkrec serve ... -- VLLM_FLAGS`: ThinkRec's own arguments, and those passed to vLLM."""
    if argv[:1] == ["serve"] and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, vllm_args = _split_vllm_args(list(sys.argv[1:] if argv is None else argv))
    args = parser().parse_args(own)
    try:
        if args.command == "serve":
            from serve.launch import run_server

            return run_server(args.run_dir, _build(ServeConfig, args), vllm_args)
        if args.command == "chat":
            from serve.client import terminal_chat

            terminal_chat(args.url, args.user_id, args.k, args.api_key)
            return 0
        run = RunDir(args.run_dir)
        if args.command == "demo":
            for flag, value in DEMO_DEFAULTS.items():  # where the user gave no flag of their own
                if getattr(args, flag) is None:
                    setattr(args, flag, value)
        plan, start = _plan(args), time.time()
        for i, (name, overrides) in enumerate(plan):
            if len(plan) > 1:
                print(f"-- stage {i + 1} of {len(plan)}: {name}{_progress(plan, i, time.time() - start)}", flush=True)
            if overrides:  # a curriculum stage: say which
                print(f"-- {name}: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()), flush=True)
            _stage(name, argparse.Namespace(**(vars(args) | overrides)), run)
    except ThinkRecError as e:
        print(f"thinkrec: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
