"""The subset of OpenAI's chat-completions protocol that `sphinx-pipeline serve` speaks, as
pydantic models: requests are read with them (unknown fields are ignored, as OpenAI clients send
options this server has no use for), responses and stream chunks are written with them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class ContentPart(_Lenient):
    """`{"type": "text", "text": ...}` or `{"type": "image_url", "image_url": {"url": ...}}`;
    other types are refused when the request is read (with the part's position)."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    """`temperature`, `top_p` or `max_tokens` omitted: the server's default (the model's
    decoding defaults unless the server was started with others); `top_k`
    and `repetition_penalty` are extensions (vLLM's names) that OpenAI clients send through
    `extra_body`."""

    model: str = "sphinx"
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | None = None
    tools: list[Any] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    """What a reply and each streamed chunk of it carry: its id, time and model."""

    id: str
    created: int
    model: str


class ChatCompletion(Completion):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(Completion):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sphinx-pipeline"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class BoxesRequest(_Lenient):
    """`POST /boxes` (the web page's helper): the boxes of an answer about an image of this
    size, in its pixels."""

    text: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class PixelBoxOut(BaseModel):
    phrase: str | None
    box: tuple[float, float, float, float]


class BoxesResponse(BaseModel):
    boxes: list[PixelBoxOut]
