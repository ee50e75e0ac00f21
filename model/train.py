"""Stage `train`: supervised fine-tuning on the task mixture with transformers' Trainer (which runs
on accelerate: the same command trains on CPU, one GPU, or many through `accelerate launch`).

Full fine-tune or LoRA (peft). With LoRA the SID token rows of the embedding are trained too
(peft's trainable_token_indices), since they are new to the model. Loss on answers only.
Checkpoints every `save_steps`; a rerun resumes from the newest one. The final model is saved
as a plain HF folder (LoRA merged) that HF generate and vLLM both load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from backbone.llm import load_causal_lm
from model.averaging import WeightAverage
from model.collate import LeftPadCollator, answer_loss, encode_chat
from model.dropout import add_residual_dropout, set_attention_dropout
from model.fastpath import Speed, plan
from model.packing import PackedCollator, PackedDataset, packed_loss
from thinkrec.config import TrainConfig
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir, train_key
from tokenizer_ext.sid import MODEL_SID_FILE, sid_tokens


class AnswerOnlyTrainer(Trainer):
    # our loss is a mean per micro-batch: the Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # same, for transformers versions without the attribute above

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = packed_loss(model, inputs) if "position_ids" in inputs else answer_loss(model, inputs)
        return (loss, None) if return_outputs else loss


class StopOnNonFiniteLoss(TrainerCallback):
    """A diverged run stops with a clear error at the first non-finite logged loss, before it saves
    a broken model that later stages would serve (checkpoints written before it stay)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise ThinkRecError(
                f"training loss became {loss} by step {state.global_step}: lower --learning-rate, or train without bf16"
            )


def _wrap_lora(model, tok, cfg: TrainConfig, sid_vocab: list[str]):
    from peft import LoraConfig, get_peft_model

    vocab = tok.get_vocab()
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=2 * cfg.lora_rank,
        target_modules="all-linear",
        trainable_token_indices={"embed_tokens": sorted(vocab[t] for t in sid_vocab)},
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def encode_sft(data, tok, cfg: TrainConfig, code_ids: set[int]):
    """The mixture's chats -> input_ids and labels (answer tokens; SID codes of behaviour prompts
    too with the history loss)."""
    return data.map(
        lambda r: encode_chat(
            tok, r["messages"], cfg.max_length, code_ids if cfg.history_loss and r["task"] == "behaviour" else None
        ),
        remove_columns=data.column_names,
        desc="tokenising",
    )


def run_train(cfg: TrainConfig, run: RunDir, callbacks: list | None = None) -> dict:
    """SFT on the run's mixture. `callbacks` (transformers TrainerCallbacks) may keep a best-on-valid
    copy of the weights (`restore_best`, e.g. eval.curve.QualityCurve): the saved model is then that one."""
    from sft_data.stage import load_sft_data  # the data stages' imports (faiss) stay out of build_trainer's
    from tokenizer_ext.stage import load_index

    index = load_index(run)
    data = load_sft_data(run, cfg.mixture)
    set_seed(cfg.seed)
    start = trained_model_dir(run, cfg.init_from) if cfg.init_from else run.path / "model_base"
    tok, model = load_causal_lm(start)
    set_attention_dropout(model, cfg.attention_dropout)
    dropout_hooks = add_residual_dropout(model, cfg.residual_dropout)
    vocab = tok.get_vocab()
    code_ids = {vocab[t] for t in sid_tokens(index.levels, index.codebook_size) if t.startswith("<s_")}
    encoded = encode_sft(data, tok, cfg, code_ids)
    if cfg.lora:
        model = _wrap_lora(model, tok, cfg, sid_tokens(index.levels, index.codebook_size))
    out = run.sub(cfg.sft_name)
    ckpt_dir = out / "checkpoints"
    callbacks = with_weight_average(cfg, callbacks)
    trainer, speed = build_trainer(cfg, model, tok, encoded, ckpt_dir, callbacks)
    resume = get_last_checkpoint(str(ckpt_dir)) if cfg.resume and ckpt_dir.is_dir() else None
    if resume:
        print(f"resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    summary = {
        "train_samples": len(encoded),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "resumed_from": resume,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
    for cb in callbacks or []:  # on every process: each loads back its own copy (its shards, under FSDP)
        kept = cb.restore_best(trainer.model) if hasattr(cb, "restore_best") else None
        if kept is not None:
            summary["kept_step"] = kept  # the step whose weights scored best on the valid split
    # sharded weights (FSDP, DeepSpeed): every process takes part in gathering them
    full_state = trainer.accelerator.get_state_dict(trainer.model) if _sharded(trainer) else None
    if not trainer.is_world_process_zero():
        return summary  # under `accelerate launch`, one process writes the results

    if full_state is None:
        final = trainer.model
        speed.restore(final)  # the saved config keeps the model's own attention
    else:  # a plain copy on CPU to merge and save: the trained model's parameters are shards
        final = _unsharded_copy(start, tok, cfg, index, full_state)
    if cfg.lora:
        final = final.merge_and_unload()
    set_attention_dropout(final, 0.0)  # the serving config stays as it was
    for hook in dropout_hooks:
        hook.remove()
    final.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    index.save(out / "model" / MODEL_SID_FILE)  # the model folder serves on its own
    history = trainer.state.log_history
    (out / "log_history.json").write_text(json.dumps(history, indent=2))
    from model.plot import plot_loss

    plot_loss(history, out / "loss.png")
    outputs = {"model": f"{cfg.sft_name}/model/config.json", "loss_plot": f"{cfg.sft_name}/loss.png"}
    run.record(train_key(cfg.sft_name), cfg, outputs, summary=summary)
    return summary


def with_weight_average(cfg: TrainConfig, callbacks: list | None) -> list:
    """The callbacks, led by a WeightAverage when cfg.weight_average is set; callbacks that evaluate
    (`evaluate_with`) then measure the averaged weights. It leads, so that at the end its average
    goes into the model before a best-on-valid copy may replace it."""
    callbacks = list(callbacks or [])
    if cfg.weight_average == 0:
        return callbacks
    average = WeightAverage(cfg.weight_average)  # a value outside (0, 1) is refused by name
    for cb in callbacks:
        if hasattr(cb, "evaluate_with"):
            cb.evaluate_with(average)
    return [average, *callbacks]


def _sharded(trainer) -> bool:
    """Whether no process holds whole parameters: FSDP, or DeepSpeed (ZeRO-3 shards them; the
    gathered copy costs ZeRO-1/2 little)."""
    return bool(trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)


def _unsharded_copy(start: Path, tok, cfg: TrainConfig, index, state: dict):
    """The model `run_train` started from, LoRA-wrapped as it was, with the gathered trained
    weights: `state` from Accelerator.get_state_dict, whole tensors on CPU (same keys as the
    unwrapped model's state_dict)."""
    _, model = load_causal_lm(start)
    if cfg.lora:
        model = _wrap_lora(model, tok, cfg, sid_tokens(index.levels, index.codebook_size))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_keys(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ThinkRecError(f"gathered weights do not fit the model, missing {missing[:5]} unexpected {unexpected[:5]}")
    return model


def _tied_keys(model) -> set[str]:
    """State-dict keys whose tensor is another key's (tied embeddings): a gathered state may list it once."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.update((name, seen[id(tensor)]))
        seen.setdefault(id(tensor), name)
    return tied


def build_trainer(
    cfg: TrainConfig, model, tok, encoded, ckpt_dir: Path, callbacks: list | None = None
) -> tuple[AnswerOnlyTrainer, Speed]:
    """The Trainer of `thinkrec train` for an encoded mixture, set up for the machine it runs on
    (model.fastpath): packed or padded batches, attention implementation, compiled layers, bf16,
    data-loading workers. benchmarks/bench_train times this same object."""
    speed = plan(cfg, model)
    speed.apply(model)
    if speed.batch_tokens:
        longest = max(len(ids) for ids in encoded["input_ids"])
        if longest > speed.batch_tokens:
            raise ThinkRecError(f"batch_tokens={speed.batch_tokens} is under the longest sample ({longest} tokens)")
        train_data, per_device = PackedDataset(encoded, speed.batch_tokens, cfg.seed), 1
    else:
        train_data, per_device = encoded, cfg.batch_size
    if speed.packing:
        collator = PackedCollator(tok.pad_token_id, speed.batch_tokens or None)
    else:
        collator = LeftPadCollator(tok.pad_token_id)
    print(speed.describe(), flush=True)
    gpu = speed.device == "cuda"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=max(1, math.ceil(cfg.warmup_ratio * _total_steps(cfg, len(train_data), per_device))),
        lr_scheduler_type="cosine",
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a non-finite loss must reach StopOnNonFiniteLoss, not be skipped
        save_steps=cfg.save_steps,
        save_total_limit=2,
        bf16=speed.bf16,
        use_cpu=not gpu,  # transformers allows bf16 on CPU only when told it is one
        train_sampling_strategy=speed.sampling,
        seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=speed.workers,
        dataloader_persistent_workers=speed.workers > 0,
        dataloader_pin_memory=gpu,
        disable_tqdm=False,
        include_num_input_tokens_seen="non_padding",  # the learning curve's x axis
    )
    if args.n_gpu > 1:
        # one process sees several GPUs: the Trainer would fall back to nn.DataParallel, which hands
        # one collator call a pack per GPU (over batch_tokens); train on one, as transformers itself
        # does for model parallelism, and say how to use them all
        print(
            f"{args.n_gpu} GPUs visible to one process: training on one. To use them all: accelerate launch "
            "--config_file configs/accelerate/ddp.yaml -m cli train ...",
            flush=True,
        )
        args._n_gpu = 1
    trainer = AnswerOnlyTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        data_collator=collator,
        processing_class=tok,
        callbacks=[StopOnNonFiniteLoss()] + [speed.eager_view(cb) for cb in callbacks or []],
    )
    return trainer, speed


def _total_steps(cfg: TrainConfig, n: int, batch: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return math.ceil(n / (batch * cfg.grad_accum) * cfg.epochs)


def trained_model_dir(run: RunDir, sft_name: str = "sft") -> Path:
    run.require(train_key(sft_name), f"train --sft-name {sft_name}" if sft_name != "sft" else "train")
    path = run.path / sft_name / "model"
    if not (path / "config.json").exists():
        raise ThinkRecError(f"run directory {run.path}: trained model {path} is missing; re-run `thinkrec train`")
    return path
