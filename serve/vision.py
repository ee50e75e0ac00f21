"""Pictures for a served model that reads them: a model folder with vision.json beside the LLM
(`thinkrec train-vision`).

vLLM runs the LLM alone; a picture reaches it as prompt embeddings (`--enable-prompt-embeds`, which
`thinkrec serve` sets for such a model). The gateway encodes each picture with the frozen encoder and
the trained projector, and puts the result into the message as a `prompt_embeds` content part:
vLLM splices it into the prompt where its chat renderer puts the part (first in the turn, then a
newline and the text), the layout train-vision trains on. Everything after that (the chat
template, the SID trie logits processor, sampling, the OpenAI response) is vLLM's own path.
"""

from __future__ import annotations

import base64
import io
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from model.vision import PROJECTOR_FILE, VISION_FILE, Projector
from serve.engine import Pictures
from serve.images import ImageError
from tokenizer_ext.prompt_block import block_aligned
from tokenizer_ext.sid import SID_BEGIN


class PictureReader:
    """Picture -> (grid**2, hidden) embeddings, as the VisionLM the model was trained in made them."""

    def __init__(self, model_dir: Path):
        from safetensors.torch import load_file

        from backbone.image import VisionEncoder

        meta = json.loads((model_dir / VISION_FILE).read_text())
        self.grid = int(meta.get("grid", 2))
        self.prompt = str(meta.get("prompt", "More like this."))  # the words train-vision trained with
        self.encoder = VisionEncoder(grid=self.grid)
        self.projector = Projector(meta["feature_dim"], meta["hidden"])
        self.projector.load_state_dict(load_file(str(model_dir / PROJECTOR_FILE)))
        self.projector.eval()

    @torch.no_grad()
    def embeds(self, image: Image.Image) -> torch.Tensor:
        return self.projector(self.encoder([image])[0])

    def part(self, image: Image.Image, dtype: torch.dtype) -> dict:
        """An OpenAI-style content part that vLLM reads as prompt embeddings."""
        buf = io.BytesIO()
        torch.save(self.embeds(image).to(dtype).contiguous(), buf)
        return {"type": "prompt_embeds", "data": base64.b64encode(buf.getvalue()).decode()}


@lru_cache(maxsize=1)
def server_reader() -> PictureReader | None:
    """The served model's reader, or None when it reads text only (THINKREC_MODEL_DIR, set by `thinkrec serve`)."""
    model_dir = Path(os.environ.get("THINKREC_MODEL_DIR", ""))
    return PictureReader(model_dir) if reads_pictures(model_dir) else None


def reads_pictures(model_dir: Path) -> bool:
    return (model_dir / VISION_FILE).exists()


def with_picture_embeds(messages: list, images: list[Image.Image], reader: PictureReader, dtype) -> list:
    """The messages with each image part (in order; `images` decoded by serve.images.check_images)
    replaced by its prompt-embeddings part, put first in its turn as training laid it out."""
    pictures = iter(images)
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        embedded, rest = [], []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                embedded.append(reader.part(next(pictures), dtype))
            else:
                rest.append(part)
        out.append({**message, "content": embedded + rest})
    return out


def refuse_client_embeds(payload: dict) -> None:
    """Prompt embeddings are made here from pictures; a client does not send its own (a tensor of
    the wrong shape or values would reach the engine unchecked)."""
    if "prompt_embeds" in payload:
        raise ImageError("prompt_embeds are not accepted: send pictures as image_url parts")
    messages = payload.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "prompt_embeds" for p in content):
            raise ImageError("prompt_embeds content parts are not accepted: send pictures as image_url parts")


def picture_prompt(
    reader: PictureReader, tokenizer, words: str, image: Image.Image, dtype
) -> tuple[list[int], Pictures]:
    """The ThinkRec search's prompt for "more like this" with a picture, laid out as train-vision's
    samples (the picture's slots, a newline, the words; the answer opened with <|sid_begin|>), and
    the picture's rows at its slots."""
    from model.vision import IMAGE_TOKEN
    from model.vision_train import picture_turn

    text = tokenizer.apply_chat_template([picture_turn(words, reader.grid)], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(block_aligned(tokenizer, text + SID_BEGIN), add_special_tokens=False)["input_ids"]
    slot = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    is_token = [t != slot for t in ids]
    rows = reader.embeds(image).to(dtype)
    embeds = torch.zeros(len(ids), rows.shape[1], dtype=dtype)
    embeds[torch.tensor([not t for t in is_token])] = rows
    return ids, Pictures(embeds, is_token)
