"""A vision encoder beside the LLM, LLaVA-style: a frozen image encoder, a trainable projector into
the LLM's embedding space, and `<image>` placeholder tokens in the prompt whose embeddings are
replaced by the projected image features.

The encoder is backbone.image.VisionEncoder (EfficientNet-Lite0, frozen); any encoder giving
(batch, tokens, dim) features fits the same projector. Features are computed once (the encoder is
frozen) and cached; training sees only the features.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

IMAGE_TOKEN = "<image>"
VISION_FILE = "vision.json"  # beside a model folder: the model reads images (serve/vision.py)
# in a subfolder: vLLM loads every top-level *.safetensors of a model folder as the LLM's weights
PROJECTOR_FILE = "vision/projector.safetensors"


class Projector(nn.Module):
    """LLaVA-1.5's two-layer MLP from image features to LLM embeddings, after a per-dimension
    standardisation of the features (`standardise`; identity until set). Pictures of one kind (all
    digits, all posters) share most of their features: unstandardised, what tells them apart is a
    sliver of the projected vector, and a model trained on them learned to ignore the picture."""

    def __init__(self, feature_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def standardise(self, features: torch.Tensor) -> None:
        """Centre and scale each feature dimension by these features' statistics (..., feature_dim)."""
        flat = features.reshape(-1, features.shape[-1]).float()
        self.feature_mean.copy_(flat.mean(0))
        self.feature_std.copy_(flat.std(0).clamp(min=1e-4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mean, std = self.feature_mean.to(features.dtype), self.feature_std.to(features.dtype)
        return self.net((features - mean) / std)


def add_image_token(tok, model) -> int:
    """Add the placeholder token (its own embedding is never used: it is always replaced)."""
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        model.resize_token_embeddings(len(tok))
    return tok.convert_tokens_to_ids(IMAGE_TOKEN)


def expand_image_tokens(text: str, tokens_per_image: int) -> str:
    """One `<image>` in a prompt stands for an image: it becomes one placeholder per image token."""
    return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * tokens_per_image)


class VisionLM(nn.Module):
    """The LLM with image features spliced in at the placeholder positions. Rows without images
    (or a batch without `image_features`) run as the plain LLM."""

    def __init__(self, llm, projector: Projector, image_token_id: int):
        super().__init__()
        self.llm, self.projector, self.image_token_id = llm, projector, image_token_id

    @property
    def device(self) -> torch.device:
        return self.projector.net[0].weight.device

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        if image_features is None or not slots.any():
            return embeds
        projected = self.projector(image_features.to(embeds.dtype))  # (B, tokens, hidden)
        if int(slots.sum()) != projected.shape[0] * projected.shape[1]:
            raise ValueError(
                f"{int(slots.sum())} {IMAGE_TOKEN} slots for {projected.shape[0]} images of {projected.shape[1]} tokens"
            )
        embeds = embeds.clone()
        # row-major: image b fills row b's slots (under autocast the projector's output is bf16)
        embeds[slots] = projected.reshape(-1, projected.shape[-1]).to(embeds.dtype)
        return embeds

    def forward(self, input_ids, attention_mask=None, image_features=None, **kwargs):
        embeds = self.embed(input_ids, image_features)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    def save(self, path: str | Path, tok, **meta) -> None:
        """The LLM folder (served by vLLM as is) with the projector beside it; `meta` joins vision.json
        (e.g. the encoder's grid, which the server needs to encode images as training did)."""
        from safetensors.torch import save_file

        path = Path(path)
        self.llm.save_pretrained(path)
        tok.save_pretrained(path)
        (path / PROJECTOR_FILE).parent.mkdir(parents=True, exist_ok=True)
        save_file(self.projector.state_dict(), str(path / PROJECTOR_FILE))
        linear = self.projector.net[0]
        meta = {"feature_dim": linear.in_features, "hidden": linear.out_features, "image_token": IMAGE_TOKEN, **meta}
        (path / VISION_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> tuple[object, VisionLM]:
        from safetensors.torch import load_file

        from backbone.llm import load_causal_lm

        path = Path(path)
        tok, llm = load_causal_lm(path)
        meta = json.loads((path / VISION_FILE).read_text())
        projector = Projector(meta["feature_dim"], meta["hidden"])
        projector.load_state_dict(load_file(str(path / PROJECTOR_FILE)))
        return tok, cls(llm, projector, tok.convert_tokens_to_ids(meta["image_token"]))


def train_projector(
    vlm: VisionLM,
    tok,
    samples: list[dict],
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    train_llm: bool = False,
    bf16: bool = True,
    checkpoints: Path | None = None,
    save_steps: int = 100,
) -> tuple[list[dict], str | None]:
    """LLaVA's first stage: only the projector learns (LLM and encoder frozen), answer-only loss;
    `train_llm` lets the LLM learn too (its second stage). The encoder stays frozen either way.
    `samples`: {"messages": chat with the answer last, "image_features": (tokens, dim) or None}.
    With `checkpoints`, a checkpoint every `save_steps` steps there, and a rerun resumes from the
    newest. Returns the Trainer's log history and the checkpoint it resumed from."""
    import tempfile

    from accelerate.utils import extract_model_from_parallel
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from model.collate import LeftPadCollator, encode_chat
    from model.fastpath import use_bf16

    set_seed(seed)
    vlm.llm.requires_grad_(train_llm)
    vlm.projector.requires_grad_(True)
    rows = [{**encode_chat(tok, s["messages"], 1024), "image_features": s.get("image_features")} for s in samples]
    args = TrainingArguments(
        output_dir=str(checkpoints) if checkpoints else tempfile.mkdtemp(prefix="thinkrec-projector-"),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),  # a gentle start: the picture-initialised code rows spike the first loss
        logging_steps=max(1, steps // 10),
        save_strategy="steps" if checkpoints else "no",
        save_steps=save_steps,
        save_total_limit=2,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        bf16=bf16 and use_bf16(on_gpu=True, on_cpu=True),
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        disable_tqdm=True,
    )
    trainer = _vision_trainer()(
        model=vlm, args=args, train_dataset=rows, data_collator=LeftPadCollator(tok.pad_token_id)
    )
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints and checkpoints.is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    # accelerate wrapped forward in the training autocast: unwrap it, so the trained model answers in
    # its own precision, as it will once saved and loaded
    extract_model_from_parallel(vlm, keep_fp32_wrapper=False)
    return trainer.state.log_history, resume


def _vision_trainer() -> type:
    """The Trainer class for a VisionLM (built here: model.train and transformers' Trainer load only
    when training, and serving imports this module for Projector)."""
    from transformers.utils import WEIGHTS_NAME

    from model.train import AnswerOnlyTrainer

    class _VisionTrainer(AnswerOnlyTrainer):
        """Checkpoints of a VisionLM, which is no transformers model: the Trainer would write its state
        dict with safetensors' save_file, which refuses the LLM's tied embedding and head. torch.save
        keeps both names, and the Trainer's resume reads the file back whole (weights only)."""

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            out = Path(output_dir or self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            torch.save(self.accelerator.unwrap_model(self.model).state_dict(), out / WEIGHTS_NAME)

    return _VisionTrainer
