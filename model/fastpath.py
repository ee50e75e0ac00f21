"""How `thinkrec train` runs on the machine it finds: packing, batch size in tokens, attention
implementation, torch.compile and data-loading workers, resolved from TrainConfig.

On a GPU the defaults are: packed rows of a fixed token budget sized to the model and the GPU's
memory, flex_attention (its block mask skips the blocks between samples, where SDPA with a
dense mask would compute them all), the decoder layers compiled, and collation in worker
processes. On CPU: left-padded batches of `batch_size` samples as before (`--packing on` packs
them into one row instead), the model's own attention, no compile (compiling takes minutes on 2
cores, more than a demo run gains), collation in the main process, fp32 (`--cpu-bf16` turns bf16
autocast on where the CPU has bf16 instructions: 1.5x a fp32 step on 2 Zen 4 cores, lower quality).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from thinkrec.config import TrainConfig
from thinkrec.errors import ThinkRecError

# Activation bytes kept for the backward pass per token, per decoder layer, under bf16 autocast:
# about ACT_HIDDEN bytes per hidden unit plus ACT_MLP per MLP unit (norm inputs in fp32, the
# projections' bf16 inputs and outputs, flex attention's output and log-sum-exp). The LM head adds
# about 10 bytes per vocabulary entry for a labelled position: accelerate hands bf16 outputs back
# in fp32, kept until the backward pass, then the fp32 and bf16 gradients.
ACT_HIDDEN, ACT_MLP, LOGIT_BYTES = 20, 6, 10
MEMORY_SHARE = 0.5  # of the GPU's memory for weights, optimizer state and activations; the rest is headroom
TOKENS_STEP, TOKENS_MAX = 4096, 65536


@dataclass
class Speed:
    device: str  # cuda | cpu
    packing: bool
    batch_tokens: int  # tokens per packed row; 0 = a row holds batch_size samples, whatever their length
    attention: str | None  # attention implementation to switch to; None = the model's own
    compile: bool
    workers: int
    bf16: bool
    sampling: str = "random"  # the Trainer's train_sampling_strategy: random | group_by_length
    original_attention: str = "sdpa"

    def describe(self) -> str:
        rows = f"packed rows of {self.batch_tokens} tokens" if self.batch_tokens else "rows of batch_size samples"
        parts = [self.device, rows if self.packing else "left-padded batches"]
        parts += [self.attention or self.original_attention]
        parts += ["compiled layers"] if self.compile else []
        parts += ["bf16" if self.bf16 else "fp32", f"{self.workers} loader workers"]
        parts += ["batches of alike lengths"] if self.sampling == "group_by_length" else []
        return "train: " + ", ".join(parts)

    def apply(self, model) -> None:
        """Switch attention and compile the layers (after LoRA wrapping: peft's layers get compiled too)."""
        if self.attention:
            set_attention(base_model(model), self.attention)
        if self.compile:
            compile_layers(model)

    def restore(self, model) -> None:
        """The model's own attention back, for saving and for inference."""
        if self.attention:
            set_attention(base_model(model), self.original_attention)

    def eager_view(self, callback):
        """A Trainer callback that may run the model (e.g. beam search on the valid split) sees it
        eager and with its own attention: generation's changing shapes would recompile the layers."""
        runs_model = getattr(callback, "runs_model", True)
        return _EagerCallback(callback, self) if runs_model and (self.attention or self.compile) else callback


class _EagerCallback:
    def __init__(self, inner, speed: Speed):
        self.inner, self.speed = inner, speed

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not name.startswith("on_") or not callable(attr):
            return attr

        def call(*args, **kwargs):
            model = kwargs.get("model")
            if model is None:
                return attr(*args, **kwargs)
            self.speed.restore(model)
            try:
                with torch.compiler.set_stance("force_eager"):
                    return attr(*args, **kwargs)
            finally:
                if self.speed.attention:
                    set_attention(base_model(model), self.speed.attention)

        return call


def plan(cfg: TrainConfig, model) -> Speed:
    """The settings this run trains with. Call after LoRA wrapping (optimizer state depends on
    what is trainable)."""
    gpu = torch.cuda.is_available()
    if cfg.packing not in ("auto", "on", "off"):
        raise ThinkRecError(f"packing={cfg.packing!r}: use auto, on or off")
    # on CPU packing measured no faster than left padding (denser attention offsets the smaller
    # LM head), so auto keeps the CPU's earlier path
    packing = cfg.packing == "on" or (cfg.packing == "auto" and gpu)
    tokens = cfg.batch_tokens
    if packing and gpu and tokens <= 0:
        tokens = auto_batch_tokens(model, cfg.max_length)
    attention = None if cfg.attention == "auto" else cfg.attention
    if cfg.attention == "auto" and packing and gpu:
        attention = "flex_attention"
    if attention == "flex_attention" and cfg.attention_dropout > 0:
        raise ThinkRecError(
            "flex_attention has no dropout: with --attention-dropout pick --attention sdpa or eager "
            "(or --packing off, which keeps the model's own attention)"
        )
    if cfg.sampling not in ("auto", "random", "length"):
        raise ThinkRecError(f"sampling={cfg.sampling!r}: use auto, random or length")
    if cfg.sampling == "length" and packing:
        raise ThinkRecError("--sampling length groups padded batches: packed rows have no padding (--packing off)")
    # alike lengths save padding; on a GPU, bf16 batches of only the shortest samples went NaN in 160 steps
    by_length = cfg.sampling == "length" or (cfg.sampling == "auto" and not (gpu or packing))
    workers = cfg.dataloader_workers
    if workers < 0:
        workers = min(4, (os.cpu_count() or 2) // 4) if gpu else 0
    return Speed(
        device="cuda" if gpu else "cpu",
        packing=packing,
        batch_tokens=max(tokens, 0) if packing else 0,
        attention=attention,
        compile=cfg.compile and gpu,
        workers=workers,
        bf16=use_bf16(cfg.bf16, cfg.cpu_bf16),
        sampling="group_by_length" if by_length else "random",
        original_attention=getattr(text_config(base_model(model)), "_attn_implementation", None) or "sdpa",
    )


def use_bf16(on_gpu: bool, on_cpu: bool) -> bool:
    """Whether to train under bf16 autocast on this machine: asked for (per device kind) and native there."""
    return on_gpu and torch.cuda.is_bf16_supported() if torch.cuda.is_available() else on_cpu and cpu_has_bf16()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions. Without them bf16 autocast is emulated and
    slower than fp32, so such a CPU trains in fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def activation_bytes_per_token(model, labelled_share: float = 0.5) -> float:
    c = text_config(model)
    per_layer = ACT_HIDDEN * c.hidden_size + ACT_MLP * c.intermediate_size
    return c.num_hidden_layers * per_layer + labelled_share * LOGIT_BYTES * c.vocab_size


def auto_batch_tokens(model, max_length: int, device: int | None = None) -> int:
    """Tokens per packed row that fill MEMORY_SHARE of the GPU: fp32 weights, gradients and
    AdamW moments of the trainable parameters, then activations; a multiple of TOKENS_STEP."""
    total = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device()).total_memory
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    free = MEMORY_SHARE * total - 4 * params - 12 * trainable
    tokens = int(free // activation_bytes_per_token(model)) // TOKENS_STEP * TOKENS_STEP
    floor = -(-max_length // TOKENS_STEP) * TOKENS_STEP  # a pack must hold the longest sample
    return max(floor, min(TOKENS_MAX, tokens))


def set_attention(model, implementation: str) -> None:
    """Switch the attention implementation of a loaded model (before any LoRA wrapping)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def decoder_layers(model) -> list[torch.nn.Module]:
    base = base_model(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    return list(getattr(decoder, "layers", []))


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place (one graph serves them all: same code, same
    shapes). In place keeps parameter names, so checkpoints and save_pretrained are unchanged;
    the embedding, the mask construction and the LM head stay eager."""
    import torch._dynamo

    layers = decoder_layers(model)
    for name in ("recompile_limit", "cache_size_limit"):  # several shapes (or models, in a benchmark) per process
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    for layer in layers:
        layer.compile()
    return len(layers)
