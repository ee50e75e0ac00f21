"""Typed configuration for every stage. Every field becomes a CLI flag (see cli/main.py);
the defaults run the whole pipeline on a 2-core CPU in well under an hour."""

from __future__ import annotations

from dataclasses import dataclass, field

from thinkrec.errors import ThinkRecError


@dataclass
class DataConfig:
    dataset: str = field(
        default="ml-100k",
        metadata={
            "help": "a data set config (.yaml over your own files: docs/own_data.md) or a shipped one: ml-100k "
            "(MovieLens-100K: users, movies, ratings) | digits (scikit-learn's 8x8 digit images as an image "
            "catalogue, no users: see thinkrec/data/digits.py)"
        },
    )
    data_dir: str = field(
        default="",
        metadata={"help": "folder the config's files are read from, instead of its files.root"},
    )
    min_core: int = field(
        default=0, metadata={"help": "k-core filter on users and items; 0 = the config's filter (5 for ml-100k)"}
    )
    max_users: int = field(default=0, metadata={"help": "keep only the first N users (by id) for quick runs; 0 = all"})
    query_share: float = field(
        default=0.2, metadata={"help": "digits: share of the images held out as query pictures (not items)"}
    )
    max_items: int = field(default=0, metadata={"help": "digits: use only N images for quick runs; 0 = all 1,797"})


@dataclass
class TokenizerConfig:
    embed_model: str = field(
        default="", metadata={"help": "sentence-transformers folder; empty = offline all-MiniLM-L6-v2"}
    )
    levels: int = field(default=3, metadata={"help": "code levels of a Semantic ID (RQ-Kmeans depth)"})
    codebook_size: int = field(
        default=0, metadata={"help": "codes per level; 0 = sized to the catalogue (see rq_kmeans.auto_codebook_size)"}
    )
    kmeans_iters: int = field(default=50, metadata={"help": "k-means iterations per level"})
    fit_sample: int = field(
        default=100_000,
        metadata={
            "help": "fit the codebooks on at most this many items drawn at random, then encode every item "
            "with them (a 10^6-item catalogue in minutes on 2 cores); 0 = fit on all"
        },
    )
    balanced: bool = field(
        default=True, metadata={"help": "cap each cluster at ceil(n / K) items per level (near-uniform code use)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    collab_align: bool = field(
        default=True, metadata={"help": "add a collaborative part (see --collab-source) to the content embedding"}
    )
    collab_source: str = field(
        default="pmi",
        metadata={
            "help": "pmi: SVD of the positive PMI of items watched close together (closed form, seconds) | "
            "sasrec: item embeddings of a SASRec trained on the train split (minutes on a CPU)"
        },
    )
    collab_epochs: int = field(
        default=30, metadata={"help": "SASRec epochs for --collab-source sasrec (RecBole's best valid epoch is 32)"}
    )
    collab_weight: float = field(
        default=1.0, metadata={"help": "weight of the collaborative half against the content half"}
    )
    collab_dim: int = field(default=64, metadata={"help": "width of the collaborative part"})
    image_dir: str = field(
        default="",
        metadata={"help": "folder of <item_id>.jpg/.png covers or frames; their features join the content embedding"},
    )
    image_weight: float = field(
        default=0.5, metadata={"help": "weight of the image part against the (unit-norm) text part"}
    )


@dataclass
class ModelConfig:
    base_model: str = field(
        default="",
        metadata={"help": "any HF causal-LM folder; empty = offline SmolLM2-135M-Instruct (GGUF, converted once)"},
    )


@dataclass
class AddItemsConfig:
    """`thinkrec add-items`: new items join a tokenized catalogue without retraining anything."""

    items_file: str = field(
        default="",
        metadata={
            "help": "the new items, in the columns of the data set's item table (CSV, TSV, JSONL, Parquet or"
            " a RecBole .item file)"
        },
    )
    neighbours: int = field(
        default=10,
        metadata={"help": "catalogue items nearest in content whose collaborative vectors a new item borrows"},
    )


@dataclass
class SFTDataConfig:
    history_len: int = field(default=10, metadata={"help": "most recent items shown in a behaviour prompt"})
    windows_per_user: int = field(
        default=8, metadata={"help": "behaviour samples per user (sliding next-item targets, newest first); 0 = all"}
    )
    window_stride: int = field(
        default=1,
        metadata={"help": "items between consecutive targets of a user's samples (history_len: every one once)"},
    )
    alignment_ratio: float = field(
        default=0.3, metadata={"help": "item-alignment samples per behaviour sample (default mixture)"}
    )
    mixture: str = field(
        default="default",
        metadata={"help": "default | alignment | activation | enhancement (see sft_data.stage.MIXTURES)"},
    )
    ratios: str = field(
        default="",
        metadata={"help": 'override the mixture\'s ratios, e.g. "user_qa=0.5,reasoning=0.2" (per behaviour sample)'},
    )
    seed: int = field(default=0, metadata={"help": "random seed"})


@dataclass
class TrainConfig:
    lora: bool = field(default=True, metadata={"help": "LoRA adapters (peft) instead of a full fine-tune"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank (with --lora)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the mixture (when max_steps is -1)"})
    max_steps: int = field(
        default=300,
        metadata={"help": "overrides epochs when > 0; 300 steps take ~15 min on 2 CPU cores (-1 = use epochs)"},
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate (linear warm-up, cosine decay)"})
    batch_size: int = field(
        default=8,
        metadata={
            "help": "samples per device and step on the padded path (packed rows on a GPU hold batch_tokens instead)"
        },
    )
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    max_length: int = field(
        default=384, metadata={"help": "tokens per sample; longer prompts lose their oldest tokens"}
    )
    history_loss: bool = field(
        default=True, metadata={"help": "also predict each history item of a behaviour prompt from the ones before it"}
    )
    warmup_ratio: float = field(
        default=0.05, metadata={"help": "share of the steps spent warming the learning rate up"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    attention_dropout: float = field(
        default=0.0,
        metadata={"help": "dropout on the attention weights while training (the saved model keeps its own setting)"},
    )
    residual_dropout: float = field(
        default=0.0,
        metadata={
            "help": "dropout while training on the token embeddings and on each attention and MLP output before "
            "the residual add (GPT-2's resid_pdrop; works with packed flex_attention rows, unlike "
            "attention_dropout); the saved model has none"
        },
    )
    weight_average: float = field(
        default=0.0,
        metadata={
            "help": "decay per step of an exponential moving average of the weights (e.g. 0.995); the curve "
            "evaluates and the stage saves the average; 0 = the raw weights (model.averaging)"
        },
    )
    save_steps: int = field(
        default=100, metadata={"help": "optimizer steps between checkpoints (a rerun resumes from the newest)"}
    )
    logging_steps: int = field(default=10, metadata={"help": "optimizer steps between loss log lines"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on a GPU that has it"})
    cpu_bf16: bool = field(
        default=False,
        metadata={
            "help": "bf16 autocast on a CPU with bf16 instructions (AVX512-BF16/AMX): 1.5x faster steps, but the "
            "300-step demo reached test Recall@10 0.095 against 0.122-0.127 in fp32, so the CPU stays fp32 unless set"
        },
    )
    packing: str = field(
        default="auto",
        metadata={"help": "padding-free rows (model.packing): auto (on a GPU; CPU keeps left padding) | on | off"},
    )
    sampling: str = field(
        default="auto",
        metadata={
            "help": "batch order: random | length (left-padded batches of alike lengths, less padding but one "
            "task per batch) | auto (length on CPU without packing, else random)"
        },
    )
    batch_tokens: int = field(
        default=0,
        metadata={"help": "tokens per packed row; 0 = fit to the model and memory on a GPU, batch_size samples on CPU"},
    )
    attention: str = field(
        default="auto",
        metadata={"help": "auto: flex_attention for packed rows on a GPU, else the model's own; or sdpa, eager"},
    )
    compile: bool = field(
        default=True,
        metadata={"help": "torch.compile the decoder layers on a GPU (never on CPU: compiling outlasts a demo's gain)"},
    )
    dataloader_workers: int = field(
        default=-1, metadata={"help": "processes collating batches; -1 = up to 4 on a GPU, none on CPU"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest checkpoint in the run directory"})
    mixture: str = field(default="default", metadata={"help": "the sft-data mixture to train on"})
    sft_name: str = field(
        default="sft", metadata={"help": "output folder and manifest entry (one per curriculum stage)"}
    )
    init_from: str = field(
        default="", metadata={"help": "start from this earlier sft_name's model in the run (curriculum); empty = base"}
    )
    # the learning curve and early stopping on the valid split (eval.curve)
    eval_every: int = field(
        default=0, metadata={"help": "optimizer steps between Recall/NDCG evaluations while training; 0 = no curve"}
    )
    curve_users: int = field(default=0, metadata={"help": "users ranked at each evaluation; 0 = all"})
    curve_splits: str = field(
        default="valid", metadata={"help": "splits measured at each evaluation: valid (model selection), test"}
    )
    curve_beams: int = field(default=20, metadata={"help": "beams of the constrained beam search at each evaluation"})
    curve_batch_size: int = field(default=8, metadata={"help": "prompts per prefill at each evaluation"})
    early_stop_patience: int = field(
        default=0, metadata={"help": "stop after this many evaluations without a valid NDCG@10 gain; 0 = never"}
    )
    keep_best: bool = field(
        default=True, metadata={"help": "with the curve on, save the weights that scored best on valid (not the last)"}
    )


@dataclass
class EvalConfig:
    split: str = field(default="test", metadata={"help": "test (last item) or valid (second to last)"})
    ks: str = field(default="5,10", metadata={"help": "cut-offs K of Recall@K and NDCG@K, comma-separated"})
    num_beams: int = field(default=20, metadata={"help": "beams kept by constrained beam search; >= max K"})
    eval_users: int = field(default=0, metadata={"help": "evaluate on the first N users; 0 = all"})
    eval_batch_size: int = field(default=8, metadata={"help": "prompts per prefill"})
    baselines: str = field(
        default="sasrec,gru4rec", metadata={"help": "sequential baselines trained on the same split (seqrec.models)"}
    )
    baseline_epochs: int = field(
        default=200,
        metadata={"help": "most epochs per baseline; early stopping on valid NDCG@10 ends most runs sooner"},
    )
    baseline_patience: int = field(
        default=5, metadata={"help": "validations (every 2 epochs) without a gain before a baseline stops"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})

    def k_list(self) -> list[int]:
        return sorted(int(k) for k in self.ks.split(",") if k.strip())


@dataclass
class SoupConfig:
    """`thinkrec soup`: average the weights of several fine-tunes of the run's base model (model/soup.py),
    the ingredients chosen greedily on the valid split (eval/soup.py)."""

    models: str = field(
        default="",
        metadata={
            "help": "comma-separated model folders (e.g. runs/a/sft/model,runs/b/sft/model), all trained "
            "from this run's tokenizer and base model"
        },
    )
    out: str = field(default="", metadata={"help": "where the soup goes; empty = RUN/sft/soup"})
    greedy: bool = field(
        default=True,
        metadata={
            "help": "add the ingredients best-first and keep each only if the soup's valid NDCG@10 does "
            "not fall (greedy soup); off = the plain mean of all"
        },
    )
    num_beams: int = field(default=20, metadata={"help": "beams of the valid evaluations"})
    eval_users: int = field(default=0, metadata={"help": "valid evaluations on the first N users; 0 = all"})
    eval_batch_size: int = field(default=8, metadata={"help": "prompts per prefill"})

    def model_list(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]


@dataclass
class VisionConfig:
    """`thinkrec train-vision` and `thinkrec image-eval`: "more like this" with a picture, on a catalogue
    whose items have images (`--dataset digits`, `tokenize --image-dir`)."""

    steps: int = field(default=300, metadata={"help": "optimizer steps of the vision training"})
    learning_rate: float = field(default=5e-4, metadata={"help": "peak learning rate (warm-up, cosine decay)"})
    batch_size: int = field(default=16, metadata={"help": "samples (pictures) per step"})
    grid: int = field(
        default=2,
        metadata={"help": "the encoder's feature map pooled to grid x grid: grid**2 image tokens per picture"},
    )
    train_llm: bool = field(
        default=True,
        metadata={"help": "fine-tune the LLM with the projector (LLaVA's second stage); off = the projector only"},
    )
    vision_bf16: bool = field(
        default=False, metadata={"help": "bf16 autocast where the machine has it (faster on CPU, lower quality)"}
    )
    save_steps: int = field(
        default=100, metadata={"help": "optimizer steps between checkpoints (a rerun resumes from the newest)"}
    )
    resume: bool = field(default=True, metadata={"help": "resume from the newest checkpoint; off = start over"})
    prompt: str = field(default="More like this.", metadata={"help": "the user's words that come with the picture"})
    image_beams: int = field(default=10, metadata={"help": "image-eval: beams of the trie search; >= 5"})
    image_queries: int = field(default=0, metadata={"help": "image-eval: use the first N query pictures; 0 = all"})
    seed: int = field(default=0, metadata={"help": "random seed"})


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address the server listens on"})
    port: int = field(default=8000, metadata={"help": "port of the server (OpenAI API, ThinkRec routes and the page)"})
    dtype: str = field(default="bfloat16", metadata={"help": "vLLM --dtype (auto, bfloat16, float16, float32)"})
    max_model_len: int = field(
        default=1024, metadata={"help": "tokens per request (prompt + answer); longer prompts get a 400"}
    )
    kv_cache_gib: int = field(
        default=1, metadata={"help": "KV cache size in GiB on CPU (VLLM_CPU_KVCACHE_SPACE, whole GiB)"}
    )
    max_num_seqs: int = field(default=64, metadata={"help": "requests batched together"})
    enforce_eager: bool = field(
        default=True, metadata={"help": "skip graph compilation: starts in under a minute on CPU"}
    )
    model_dir: str = field(
        default="",
        metadata={
            "help": "serve this HF folder; empty = the model the manifest records as served, else SFT, else base"
        },
    )
    api_key: str = field(
        default="",
        metadata={"help": "required on every route but /health and /ping; empty = THINKREC_API_KEY, else open"},
    )
    num_beams: int = field(
        default=20, metadata={"help": "/thinkrec beam width when a request names none (eval's default; at least k)"}
    )
    flat_searches: int = field(
        default=2,
        metadata={
            "help": "/thinkrec searches in flight up to which a search sends each level's prefixes at once"
            " (fewest engine steps: latency); beyond it, fewest tokens (throughput). 0 = never"
        },
    )
    block_size: int = field(
        default=32,
        metadata={
            "help": "KV block in tokens: prefix-cache hits land on its multiples (CPU takes multiples of 32); search "
            "prompts are whole 32-token blocks (tokenizer_ext.prompt_block), so 32 lets every branch reuse all of it"
        },
    )
    align_prompts: bool = field(
        default=True,
        metadata={
            "help": "start /thinkrec search prompts with the fillers that make them whole 32-token blocks, as eval "
            "and training do; off: no fillers, so each search request recomputes the prompt's last partial block"
        },
    )
    max_restarts: int = field(
        default=5, metadata={"help": "restarts of a dead engine within 10 minutes before `thinkrec serve` gives up"}
    )


@dataclass
class PScoreConfig:
    pscore_dim: int = field(default=64, metadata={"help": "embedding width of the preference model"})
    pscore_history: int = field(default=20, metadata={"help": "most recent items the preference model attends over"})
    pscore_negatives: int = field(
        default=2, metadata={"help": 'random unwatched items per watched one (the "watch" head\'s zeros)'}
    )
    pscore_epochs: int = field(default=3, metadata={"help": "training epochs of the preference model"})
    pscore_lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of the preference model"})
    head_weights: str = field(
        default="",
        metadata={
            "help": "fusion of the heads' probabilities into one score, e.g. watch=0.5,like=0.3,love=0.2; empty ="
            " the data set's default (first head 0.5, the stronger signals share the rest)"
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed"})

    def weights(self) -> dict[str, float]:
        """The fusion weights given; {} = the data set's default."""
        out = {}
        for part in filter(str.strip, self.head_weights.split(",")):
            name, _, value = part.partition("=")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise ThinkRecError(f"--head-weights {self.head_weights!r}: use head=number, comma-separated") from None
        return out


@dataclass
class RLConfig:
    rl_users: int = field(
        default=64, metadata={"help": "users whose train parts RL trains on (the first N); later users are held out"}
    )
    rl_eval_users: int = field(
        default=300, metadata={"help": "held-out users for the before/after report (test split), right after rl_users"}
    )
    rl_select_users: int = field(
        default=64, metadata={"help": "the last N users: checkpoints are chosen on their valid split (never tested on)"}
    )
    rl_steps: int = field(default=30, metadata={"help": "policy updates"})
    users_per_step: int = field(default=4, metadata={"help": "users whose groups make one policy update"})
    rl_window: int = field(
        default=32, metadata={"help": "each step's target is one of a user's newest N train items (never valid/test)"}
    )
    rl_target: str = field(
        default="train",
        metadata={
            "help": "train: each step's target is one of a user's newest rl_window train items (SFT trained on "
            "them) | valid: the RL user's valid item, which SFT never saw (selection and report users stay apart)"
        },
    )
    rollout: str = field(
        default="beam",
        metadata={"help": "beam (trie beam search, the report's choice: the group is what users get) | sample"},
    )
    group_size: int = field(
        default=16, metadata={"help": "G items per user from the old policy (the top-G beams, or G samples)"}
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "sampling temperature (rollout sample, and the free samples of the format reward)"},
    )
    updates_per_sample: int = field(
        default=2, metadata={"help": "policy updates per batch of samples (the old policy is the sampler)"}
    )
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip"})
    delta: float = field(
        default=0.1, metadata={"help": "early clip: negative-advantage ratios are capped at 1 + epsilon + delta"}
    )
    rl_learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate of the ECPO policy (LoRA)"})
    rl_lora_rank: int = field(default=16, metadata={"help": "LoRA rank of the ECPO policy"})
    pscore_weight: float = field(
        default=1.0, metadata={"help": "weight of the preference reward (P-Score, with the business rule)"}
    )
    hit_weight: float = field(
        default=1.0, metadata={"help": "reward of the sample that is the user's real next (train) item"}
    )
    rank_weight: float = field(
        default=1.0,
        metadata={"help": "penalty of wrong items in a group that holds the real item, heavier at higher rank"},
    )
    format_samples: int = field(
        default=4, metadata={"help": "K legal samples, chosen at random, per user for the format loss"}
    )
    format_weight: float = field(
        default=0.1,
        metadata={"help": "small: its samples are random legal items, and pushing them up flattens the ranking"},
    )
    sft_weight: float = field(
        default=1.0,
        metadata={"help": "SFT loss on the step's (history, next train item) pairs, trained together (0 = off)"},
    )
    flagged: str = field(
        default="",
        metadata={
            "help": "the business rule's item class: attribute=value (genres=Action), or attribute>number for a"
            " numeric attribute; empty = the data set's config (rules.flagged); none = no rule"
        },
    )
    rule_threshold: float = field(
        default=0.2, metadata={"help": "f: damping starts once the class's share of a group passes this"}
    )
    rule_alpha: float = field(
        default=0.5, metadata={"help": "alpha: flagged items' reward is multiplied by this; 1.0 = no rule"}
    )
    rl_save_steps: int = field(
        default=10,
        metadata={"help": "checkpoint (and valid-split evaluation for the choice of the model) every N steps"},
    )
    rl_name: str = field(
        default="rl", metadata={"help": "output folder and manifest entry (e.g. rl_norule for a run with rule_alpha 1)"}
    )
    rl_init: str = field(
        default="sft",
        metadata={"help": "the trained model RL starts from: an sft name (train --sft-name), e.g. sft_reason"},
    )
    reasoning: bool = field(
        default=False,
        metadata={
            "help": "reasoning enhancement: rollouts write a rationale, then name an item (rl/reasoning.py); "
            "chosen on the valid split asked reasoning-first, never the served model"
        },
    )
    think_tokens: int = field(default=64, metadata={"help": "longest rationale a reasoning rollout writes (tokens)"})
    seed: int = field(default=0, metadata={"help": "random seed"})


@dataclass
class QAEvalConfig:
    qa_models: str = field(
        default="base,sft",
        metadata={"help": "models to compare: base (untrained, SID tokens added) and trained sft names"},
    )
    qa_questions: int = field(default=40, metadata={"help": "held-out questions per multiple-choice task"})
    qa_rec_users: int = field(
        default=40, metadata={"help": "held-out users for the rationale and the with/without-reasoning recommendation"}
    )
    qa_k: int = field(default=10, metadata={"help": "Recall/NDCG cut-off (also the beam width)"})
    qa_history_len: int = field(
        default=10, metadata={"help": "items shown in user-QA and reasoning prompts (as the QA mixture was built)"}
    )
    think_tokens: int = field(default=64, metadata={"help": "rationale length cap"})
    qa_batch_size: int = field(default=8, metadata={"help": "prompts per forward pass"})
    seed: int = field(default=0, metadata={"help": "random seed"})


@dataclass
class ChatEvalConfig:
    chat_users: int = field(default=94, metadata={"help": "held-out users asked (every 10th user; 94 in all)"})
    chat_k: int = field(default=10, metadata={"help": "items per answer (satisfaction is over these; Recall/NDCG@K)"})
    chat_beams: int = field(default=20, metadata={"help": "beam width of the search after the reply"})
    reply_tokens: int = field(default=48, metadata={"help": "cap on the reply written before the items"})
    chat_batch_size: int = field(default=8, metadata={"help": "prompts per forward pass"})
    chat_model_dir: str = field(default="", metadata={"help": "model to ask (default: the one the run serves)"})
    compare_model_dir: str = field(
        default="",
        metadata={"help": "a behaviour-only SFT model to compare plain Recall/NDCG@10 with (a folder; optional)"},
    )
    plain_users: int = field(
        default=0,
        metadata={
            "help": "users of the plain Recall/NDCG@K comparison: 0 = the chat users; N = the first N of all users "
            "(on 94 users chance alone moves Recall@10 by about 0.04; 943 settles a gap of 0.02)"
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
