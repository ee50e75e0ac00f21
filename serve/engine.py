"""The ThinkRec routes' calls into the vLLM engine. The gateway runs inside vLLM's API server, so
it uses the server's own engine client (app.state.engine_client) in-process: no HTTP loopback, no
OpenAI request parsing per call, and no API key to forward."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import torch
from vllm import SamplingParams
from vllm.inputs import EmbedsPrompt, TokensPrompt

from serve.logits_processor import XARG


@dataclass
class Pictures:
    """Prompt positions that hold picture embeddings (serve/vision.py) instead of tokens: vLLM's
    mixed prompts (`--enable-prompt-embeds`), where token positions read the model's own embeddings."""

    embeds: torch.Tensor  # (prompt length, hidden): picture rows where is_token is False, zeros elsewhere
    is_token: list[bool]

    def prompt(self, prompt_ids: list[int]) -> EmbedsPrompt:
        """The prompt for `prompt_ids`, which start with the pictured prompt (a search extends it)."""
        extra = len(prompt_ids) - len(self.is_token)
        embeds = torch.cat([self.embeds, self.embeds.new_zeros(extra, self.embeds.shape[1])])
        return EmbedsPrompt(
            prompt_embeds=embeds, prompt_token_ids=prompt_ids, prompt_is_token_ids=self.is_token + [True] * extra
        )


class Engine:
    def __init__(self, client) -> None:
        self.client = client

    async def _final(self, prompt_ids: list[int], params: SamplingParams, pictures: Pictures | None = None):
        final = None
        request_id = f"thinkrec-{uuid.uuid4().hex}"
        prompt = pictures.prompt(prompt_ids) if pictures else TokensPrompt(prompt_token_ids=prompt_ids)
        # leaving this loop early (client gone, task cancelled) aborts the request in the engine
        async for out in self.client.generate(prompt, params, request_id):
            final = out
        return final

    async def score(
        self,
        prompt_ids: list[int],
        token_ids: list[int] | None,
        num_logprobs: int,
        steps: int,
        pictures: Pictures | None = None,
    ) -> list[tuple[int, dict[int, float]]]:
        """After `prompt_ids` (which ends inside an open SID), per generated step: the token taken
        (greedy, down the trie) and log-probabilities where it stood: of `token_ids` if given
        (exactly those), else of the `num_logprobs` most likely tokens. `pictures`: the positions
        of `prompt_ids` that hold pictures."""
        params = SamplingParams(
            max_tokens=steps,
            temperature=0.0,
            logprobs=None if token_ids else num_logprobs,
            logprob_token_ids=token_ids or None,
            detokenize=False,
            extra_args={XARG: "score"},
        )
        out = (await self._final(prompt_ids, params, pictures)).outputs[0]
        return [
            (int(tok), {int(t): float(lp.logprob) for t, lp in step.items()})
            for tok, step in zip(out.token_ids, out.logprobs, strict=False)
        ]

    async def reply(self, prompt_ids: list[int], max_tokens: int, stop: list[str]) -> str:
        """Greedy text until `stop`; any SID it opens stays inside the catalogue ("constrain" mode)."""
        params = SamplingParams(
            max_tokens=max_tokens, temperature=0.0, stop=stop, skip_special_tokens=False, extra_args={XARG: "constrain"}
        )
        out = await self._final(prompt_ids, params)
        return out.outputs[0].text

    def dtype(self) -> torch.dtype:
        """The served model's dtype: prompt embeddings must come in it."""
        return self.client.vllm_config.model_config.dtype

    def chunked_prefill(self) -> bool:
        cfg = getattr(self.client, "vllm_config", None)
        return bool(cfg is None or cfg.scheduler_config.enable_chunked_prefill)
