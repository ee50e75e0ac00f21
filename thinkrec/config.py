"""Typed configuration for every stage. Every field becomes a CLI flag (see thinkrec.cli);
the defaults run the whole pipeline on a 2-core CPU in well under an hour."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    dataset: str = "ml-100k"
    data_dir: str = ""  # folder with ml-100k.{inter,item,user}; empty = the copy shipped in the recbole wheel
    min_core: int = 5  # k-core filter on users and items
    max_users: int = 0  # keep only the first N users (by id) for quick runs; 0 = all


@dataclass
class TokenizerConfig:
    embed_model: str = ""  # sentence-transformers folder; empty = offline all-MiniLM-L6-v2
    levels: int = 3
    codebook_size: int = 0  # codes per level; 0 = sized to the catalogue (see rq_kmeans.auto_codebook_size)
    kmeans_iters: int = 50
    balanced: bool = True  # cap each cluster at ceil(n / K) items per level (near-uniform code use)
    seed: int = 0
    collab_align: bool = True  # add a collaborative (co-occurrence PMI) part to the content embedding
    collab_weight: float = 1.0  # weight of the collaborative half against the content half
    collab_dim: int = 64


@dataclass
class ModelConfig:
    base_model: str = ""  # any HF causal-LM folder; empty = offline SmolLM2-135M-Instruct (GGUF, converted once)


@dataclass
class SFTDataConfig:
    history_len: int = 10  # most recent items shown in a behaviour prompt
    windows_per_user: int = 8  # behaviour samples per user (sliding next-item targets, newest first)
    alignment_ratio: float = 0.3  # item-alignment samples per behaviour sample
    seed: int = 0


@dataclass
class TrainConfig:
    lora: bool = True  # LoRA adapters (peft) instead of a full fine-tune
    lora_rank: int = 16
    epochs: float = 1.0
    max_steps: int = -1  # overrides epochs when > 0
    learning_rate: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 384
    warmup_ratio: float = 0.05
    save_steps: int = 100
    logging_steps: int = 10
    bf16: bool = False  # on GPU; the CPU default stays fp32
    seed: int = 0
    resume: bool = True  # continue from the newest checkpoint in the run directory


@dataclass
class EvalConfig:
    split: str = "test"  # test (last item) or valid (second to last)
    ks: str = "5,10"
    num_beams: int = 20  # beams kept by constrained beam search; >= max K
    eval_users: int = 0  # evaluate on the first N users; 0 = all
    eval_batch_size: int = 8  # prompts per prefill
    sasrec_epochs: int = 60
    seed: int = 0

    def k_list(self) -> list[int]:
        return sorted(int(k) for k in self.ks.split(",") if k.strip())


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "bfloat16"  # vLLM --dtype (auto, bfloat16, float16, float32)
    max_model_len: int = 1024  # tokens per request (prompt + answer); longer prompts get a 400
    kv_cache_gib: int = 1  # KV cache size in GiB on CPU (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    max_num_seqs: int = 64  # requests batched together
    enforce_eager: bool = True  # skip graph compilation: starts in under a minute on CPU
    model_dir: str = ""  # serve this HF folder; empty = the run's trained model (else its base model)
