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

import torch
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from model.base import load_causal_lm
from model.collate import LeftPadCollator, answer_loss, encode_chat
from model.plot import plot_loss
from sft_data.stage import load_sft_data
from thinkrec.config import TrainConfig
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import MODEL_SID_FILE, sid_tokens
from tokenizer_ext.stage import load_index


class AnswerOnlyTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = answer_loss(model, inputs)
        return (loss, None) if return_outputs else loss


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


def run_train(cfg: TrainConfig, run: RunDir) -> dict:
    index = load_index(run)
    data = load_sft_data(run, cfg.mixture)
    set_seed(cfg.seed)
    start = trained_model_dir(run, cfg.init_from) if cfg.init_from else run.path / "model_base"
    tok, model = load_causal_lm(start)
    vocab = tok.get_vocab()
    code_ids = {vocab[t] for t in sid_tokens(index.levels, index.codebook_size) if t.startswith("<s_")}
    encoded = data.map(
        lambda r: encode_chat(
            tok, r["messages"], cfg.max_length, code_ids if cfg.history_loss and r["task"] == "behaviour" else None
        ),
        remove_columns=data.column_names,
        desc="tokenising",
    )
    if cfg.lora:
        model = _wrap_lora(model, tok, cfg, sid_tokens(index.levels, index.codebook_size))
    out = run.sub(cfg.sft_name)
    ckpt_dir = out / "checkpoints"
    use_bf16 = cfg.bf16 and torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=max(1, math.ceil(cfg.warmup_ratio * _total_steps(cfg, len(encoded)))),
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        bf16=use_bf16,
        seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )
    trainer = AnswerOnlyTrainer(
        model=model, args=args, train_dataset=encoded, data_collator=LeftPadCollator(tok.pad_token_id)
    )
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
    if not trainer.is_world_process_zero():
        return summary  # under `accelerate launch`, one process writes the results

    final = trainer.model
    if cfg.lora:
        final = final.merge_and_unload()
    final.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    index.save(out / "model" / MODEL_SID_FILE)  # the model folder serves on its own
    history = trainer.state.log_history
    (out / "log_history.json").write_text(json.dumps(history, indent=2))
    plot_loss(history, out / "loss.png")
    outputs = {"model": f"{cfg.sft_name}/model/config.json", "loss_plot": f"{cfg.sft_name}/loss.png"}
    run.record(_stage_key(cfg.sft_name), cfg, outputs, summary=summary)
    return summary


def _total_steps(cfg: TrainConfig, n: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return math.ceil(n / (cfg.batch_size * cfg.grad_accum) * cfg.epochs)


def _stage_key(sft_name: str) -> str:
    return "train" if sft_name == "sft" else f"train_{sft_name}"


def trained_model_dir(run: RunDir, sft_name: str = "sft") -> Path:
    run.require(_stage_key(sft_name), f"train --sft-name {sft_name}" if sft_name != "sft" else "train")
    path = run.path / sft_name / "model"
    if not (path / "config.json").exists():
        raise ThinkRecError(f"run directory {run.path}: trained model {path} is missing; re-run `thinkrec train`")
    return path
