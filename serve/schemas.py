"""Request bodies of the /thinkrec routes. A body that does not fit is a 422 whose message names
each bad field (`k: Input should be a valid integer`), as FastAPI answers; nothing malformed
reaches the catalogue or the engine."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, model_validator

MAX_K = 50
MAX_BEAMS = 2 * MAX_K
MAX_HISTORY = 1000
MAX_TURNS = 50
MAX_TEXT = 20_000  # characters of one message or items text; the engine's max_model_len still applies


def _id(value: object) -> object:
    """User and item ids are strings; a JSON number is taken as its decimal string (never a bool)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_id), Field(min_length=1, max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Who(_Body):
    user_id: Id | None = None
    history: Annotated[list[Id], Field(max_length=MAX_HISTORY)] | None = None

    def _check_someone(self) -> None:
        if self.user_id is None and not self.history:
            raise ValueError("give a user_id or a non-empty history of item ids")


class RecommendRequest(_Who):
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    num_beams: Annotated[StrictInt, Field(ge=1, le=MAX_BEAMS)] | None = None  # default: the server's, at least k

    @model_validator(mode="after")
    def _someone(self):
        self._check_someone()
        return self


class TextPart(_Body):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_TEXT)]


class ImageURL(_Body):
    url: str  # a data: URL; serve/images.py decodes it under its own limits


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatTurn(_Body):
    role: Literal["user", "assistant"]
    # text, or OpenAI-style parts: text and (in the last user turn) a picture
    content: Annotated[str, Field(max_length=MAX_TEXT)] | Annotated[list[Part], Field(min_length=1, max_length=8)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    def picture_urls(self) -> list[str]:
        return (
            [] if isinstance(self.content, str) else [p.image_url.url for p in self.content if isinstance(p, ImagePart)]
        )


class ChatRequest(_Who):
    messages: Annotated[list[ChatTurn], Field(min_length=1, max_length=MAX_TURNS)]
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 3
    num_beams: Annotated[StrictInt, Field(ge=1, le=MAX_BEAMS)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1, le=256)] = 48

    @model_validator(mode="after")
    def _ends_with_user(self):
        if self.messages[-1].role != "user":
            raise ValueError("messages must end with a user turn")
        if any(t.picture_urls() for t in self.messages[:-1]):
            raise ValueError("a picture may come in the last user turn only")
        if not self.messages[-1].picture_urls():  # "more like this" with a picture needs no history
            self._check_someone()
        return self


class ItemsRequest(_Body):
    text: Annotated[str, Field(max_length=MAX_TEXT)]


def describe(err: ValidationError) -> str:
    """One line per bad field: `messages.0.role: Input should be 'user' or 'assistant'`."""
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)
