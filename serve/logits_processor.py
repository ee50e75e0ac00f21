"""A vLLM V1 logits processor that keeps every generated SID inside the catalogue's prefix trie.

Registered once per engine (`LLM(..., logits_processors=[SIDTrieLogitsProcessor])` or the server's
`--logits-processors serve.logits_processor:SIDTrieLogitsProcessor`). The trie is built once, from
the `thinkrec_sid_index.json` that every ThinkRec model folder carries.

A request opts in with `extra_args` (HTTP: `"vllm_xargs"`) `{"thinkrec": MODE}`:
  - "constrain": free text, but any SID the model opens with <|sid_begin|> is completed inside
    the trie, and code tokens outside an open SID are blocked (text can reason first, then name items);
  - "items": the answer is SIDs only: outside a SID only <|sid_begin|> or end-of-sequence may follow;
  - "off": no constraint at all, even for a prompt that ends inside an open SID (for measuring
    what the model does alone, and what the constraint costs);
  - "score": for a prompt that ends inside an open SID: the returned logprobs are exactly the trie's
    next codes, with their log-probabilities under the unmasked model (the ThinkRec search, serve/search.py).
A request whose prompt already ends inside an open SID (e.g. "...<|sid_begin|><s_a_3>") is
constrained without opting in: vLLM's beam search sends each step as a fresh one-token request
without extra_args, so the prompt tail is the only signal it leaves.

Per step the cost is one state update and one dict lookup per constrained row (O(batch)), then
three tensor ops for the whole batch; nothing scales with the catalogue.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from serve.trie_masker import MODES, TrieMasker
from tokenizer_ext.sid import TokenTrie

XARG = "thinkrec"


class SIDTrieLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = sampling_params.extra_args or {}
        if XARG in extra and extra[XARG] not in MODES:
            raise ValueError(f"vllm_xargs.{XARG} must be one of {list(MODES)}, not {extra[XARG]!r}")
        unknown = [k for k in extra if k.startswith(XARG) and k != XARG]
        if unknown:
            raise ValueError(f"unknown vllm_xargs {unknown}; ThinkRec reads only {XARG!r}")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        model_dir = os.environ.get("THINKREC_MODEL_DIR") or vllm_config.model_config.model
        eos = vllm_config.model_config.hf_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.masker = TrieMasker(TokenTrie.from_model_dir(Path(model_dir)), eos_ids, device)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            for index in batch_update.removed:
                self.masker.remove(index)
            for index, params, prompt_ids, output_ids in batch_update.added:
                self.masker.add(index, (params.extra_args or {}).get(XARG), prompt_ids or [], output_ids)
            for a, b, direction in batch_update.moved:
                self.masker.move(a, b, direction == MoveDirectionality.SWAP)
        self.masker.advance()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.masker.apply(logits)
