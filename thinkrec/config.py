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
    image_dir: str = ""  # folder of <item_id>.jpg/.png covers or frames; their features join the content embedding
    image_weight: float = 0.5  # weight of the image part against the (unit-norm) text part


@dataclass
class ModelConfig:
    base_model: str = ""  # any HF causal-LM folder; empty = offline SmolLM2-135M-Instruct (GGUF, converted once)


@dataclass
class SFTDataConfig:
    history_len: int = 10  # most recent items shown in a behaviour prompt
    windows_per_user: int = 8  # behaviour samples per user (sliding next-item targets, newest first)
    alignment_ratio: float = 0.3  # item-alignment samples per behaviour sample (default mixture)
    mixture: str = "default"  # default | alignment | activation | enhancement (see sft_data.stage.MIXTURES)
    ratios: str = ""  # override the mixture's ratios, e.g. "user_qa=0.5,reasoning=0.2" (per behaviour sample)
    seed: int = 0


@dataclass
class TrainConfig:
    lora: bool = True  # LoRA adapters (peft) instead of a full fine-tune
    lora_rank: int = 16
    epochs: float = 1.0
    max_steps: int = 300  # overrides epochs when > 0; 300 steps take ~15 min on 2 CPU cores (-1 = use epochs)
    learning_rate: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 384
    history_loss: bool = True  # also predict each history item of a behaviour prompt from the ones before it
    warmup_ratio: float = 0.05
    save_steps: int = 100
    logging_steps: int = 10
    bf16: bool = False  # on GPU; the CPU default stays fp32
    seed: int = 0
    resume: bool = True  # continue from the newest checkpoint in the run directory
    mixture: str = "default"  # the sft-data mixture to train on
    sft_name: str = "sft"  # output folder and manifest entry (one per curriculum stage)
    init_from: str = ""  # start from this earlier sft_name's model in the run (curriculum); empty = base


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
    model_dir: str = ""  # serve this HF folder; empty = the run's RL model, else its SFT model, else base


@dataclass
class PScoreConfig:
    pscore_dim: int = 64
    pscore_history: int = 20  # most recent items the preference model attends over
    pscore_negatives: int = 2  # random unwatched items per watched one (the "watch" head's zeros)
    pscore_epochs: int = 3
    pscore_lr: float = 3e-3
    head_weights: str = "watch=0.5,like=0.3,love=0.2"  # fusion of the heads' probabilities into one score
    seed: int = 0

    def weights(self) -> dict[str, float]:
        out = {}
        for part in self.head_weights.split(","):
            name, _, value = part.partition("=")
            out[name.strip()] = float(value)
        return out


@dataclass
class RLConfig:
    rl_users: int = 64  # users whose histories RL trains on (the first N); later users are held out
    rl_eval_users: int = 100  # held-out users for the before/after report
    rl_steps: int = 30  # policy updates
    users_per_step: int = 4
    group_size: int = 8  # G items sampled per user from the old policy
    temperature: float = 1.0
    updates_per_sample: int = 2  # policy updates per batch of samples (the old policy is the sampler)
    epsilon: float = 0.2  # PPO clip
    delta: float = 0.1  # early clip: negative-advantage ratios are capped at 1 + epsilon + delta
    rl_learning_rate: float = 2e-4
    rl_lora_rank: int = 16
    format_samples: int = 4  # K legal samples, chosen at random, per user for the format loss
    format_weight: float = 0.5
    sft_weight: float = 0.0  # optional SFT loss on the behaviour mixture, trained together
    flagged_genre: str = "Action"  # the business rule's item class
    rule_threshold: float = 0.2  # f: damping starts once the class's share of a group passes this
    rule_alpha: float = 0.5  # alpha: flagged items' reward is multiplied by this; 1.0 = no rule
    rl_save_steps: int = 10
    rl_name: str = "rl"  # output folder and manifest entry (e.g. rl_norule for a run with rule_alpha 1)
    seed: int = 0


@dataclass
class QAEvalConfig:
    qa_models: str = "base,sft"  # models to compare: base (untrained, SID tokens added) and trained sft names
    qa_questions: int = 40  # held-out questions per multiple-choice task
    qa_rec_users: int = 40  # held-out users for the rationale and the with/without-reasoning recommendation
    qa_k: int = 10  # Recall/NDCG cut-off (also the beam width)
    qa_history_len: int = 10  # items shown in user-QA and reasoning prompts (as the QA mixture was built)
    think_tokens: int = 64  # rationale length cap
    qa_batch_size: int = 8
    seed: int = 0
