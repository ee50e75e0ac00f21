"""Prompts that fill whole KV blocks.

vLLM's prefix cache keeps full blocks only (32 tokens on CPU), so every request of the served
top-K search, which branches off the prompt with 1-3 code tokens, recomputes the prompt's last
partial block first: 10 beams x up to 31 tokens a level, where HF's search computes 10. Leading
filler tokens that round the search prompt up to a whole number of blocks leave each branch only
its own tokens. Training puts the same fillers before the prompt of every sample whose answer
holds a SID (as many as round prompt + <|sid_begin|> up), so the model has seen 0-31 of them in
front of each such task and the count it meets at inference changes nothing. Text-only samples
(QA, item descriptions) keep their prompts as they are: no search branches off them. The filler
is the pretraining corpus's document separator, which the base model already reads as "a new
text starts here".
"""

from __future__ import annotations

from thinkrec.errors import ThinkRecError

PROMPT_BLOCK = 32  # tokens; vLLM's KV block on CPU (serve --block-size, which takes multiples of 32)
FILLER = "<|endoftext|>"


def filler_id(tok) -> int:
    ids = tok(FILLER, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ThinkRecError(f"the tokenizer has no single {FILLER} token to pad prompts with")
    return ids[0]


def fill_count(length: int, block: int = PROMPT_BLOCK) -> int:
    """Fillers that round `length` tokens up to a multiple of `block`."""
    return -length % block


def block_aligned(tok, text: str, block: int = PROMPT_BLOCK) -> str:
    """`text` behind as many fillers as make it a whole number of `block`-token blocks."""
    filler_id(tok)
    return FILLER * fill_count(len(tok(text, add_special_tokens=False)["input_ids"]), block) + text
