"""Reading a chat-completions request: its JSON checked against the protocol, its messages turned
into the processor's conversation (each image part an `<image>` where it stands), its images
loaded, and the model's inputs and `generate` options made, all before it waits in the queue."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from sphinx_mllm.pipeline.config import GenerationDefaults
from sphinx_mllm.pipeline.serving.image_inputs import load_image
from sphinx_mllm.pipeline.serving.limits import RequestError, ServerLimits
from sphinx_mllm.pipeline.serving.protocol import ChatCompletionRequest, ChatMessage

if TYPE_CHECKING:
    from sphinx_mllm.pipeline.model import SphinxModel
    from sphinx_mllm.pipeline.processor import ModelInputs

RequestModel = TypeVar("RequestModel", bound=BaseModel)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4


@dataclass
class Prepared:
    """A checked request: the model's inputs and the options for `generate`."""

    inputs: ModelInputs
    options: dict[str, Any]
    stops: tuple[str, ...]
    model: str
    include_usage: bool = False


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past `limit` bytes without reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the request body is over the limit of {limit} bytes")
    return bytes(body)


def read_request(kind: type[RequestModel], body: bytes) -> RequestModel:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the request body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise RequestError(
            400, f"the request body must be a JSON object, not {type(data).__name__}"
        )
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestError(400, f"{where}: {first['msg']}", param=where) from error


def prepare(
    model: SphinxModel,
    chat: ChatCompletionRequest,
    limits: ServerLimits,
    defaults: GenerationDefaults,
) -> Prepared:
    """Check a request and make the model's inputs (images decoded, prompt rendered); what the
    request leaves out of max_tokens, temperature and top_p comes from `defaults`."""
    if chat.n != 1:
        raise RequestError(400, f"n must be 1 (one reply per request), got {chat.n}", "n")
    if chat.tools:
        raise RequestError(400, "tools are not supported by this server", "tools")
    if chat.logprobs:
        raise RequestError(400, "logprobs are not supported by this server", "logprobs")
    processor = model.processor
    conversation, sources = conversation_of(chat.messages, processor.image_text)
    if len(sources) > limits.max_images:
        raise RequestError(
            400, f"the request holds {len(sources)} images; the limit is {limits.max_images}"
        )
    images = [load_image(url, where, limits) for where, url in sources]
    try:
        inputs = processor([conversation], [images], generation=True)
    except ValueError as error:
        raise RequestError(400, f"cannot render the conversation: {error}", "messages") from error
    prompt = int(inputs.input_ids.shape[1])
    room = _positions(model) - prompt
    if room < 1:
        raise RequestError(
            400, f"the prompt is {prompt} tokens; the model reads at most {_positions(model)}"
        )
    asked = chat.max_completion_tokens or chat.max_tokens
    if asked is not None and asked > room:
        raise RequestError(
            400,
            f"the prompt is {prompt} tokens and max_tokens is {asked}; the model reads at most "
            f"{_positions(model)} tokens in all, so at most {room} new ones",
            "max_tokens",
        )
    stops = _stops(chat.stop)
    temperature = defaults.temperature if chat.temperature is None else chat.temperature
    options: dict[str, Any] = {
        "max_new_tokens": asked or min(defaults.max_new_tokens, room),
        "do_sample": temperature > 0,
        "repetition_penalty": chat.repetition_penalty or 1.0,
    }
    if temperature > 0:
        options.update(
            temperature=temperature,
            top_p=defaults.top_p if chat.top_p is None else chat.top_p,
            top_k=chat.top_k,
            seed=chat.seed,
        )
    if stops:
        options["stop_strings"] = list(stops)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    return Prepared(inputs.to(model.device), options, stops, chat.model, include_usage)


def conversation_of(
    messages: Sequence[ChatMessage], image_text: str
) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """The processor's conversation (`{"role", "content"}` messages, each image part written as
    `image_text` where it stands, parts joined by newlines) and the image URLs in order, each
    with where it is in the request."""
    if not messages:
        raise RequestError(400, "messages is empty: give at least one user message", "messages")
    conversation: list[dict[str, str]] = []
    sources: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = ROLES.get(message.role)
        if role is None:
            raise RequestError(
                400,
                f"{where}.role {message.role!r} is not supported: use system, user or assistant",
                f"{where}.role",
            )
        if role == "system" and index != 0:
            raise RequestError(400, f"{where}: a system message must come first", where)
        if role != "system":
            turn = len(conversation) - _has_system(conversation)
            expected = "user" if turn % 2 == 0 else "assistant"
            if role != expected:
                raise RequestError(
                    400,
                    f"{where} is from the {role} where the {expected} was expected: after an "
                    "optional system message, user and assistant messages alternate, starting "
                    "with the user",
                    f"{where}.role",
                )
        text = _content(message, role, where, image_text, sources)
        conversation.append({"role": role, "content": text})
    if conversation[-1]["role"] != "user":
        raise RequestError(
            400, "the last message must be from the user (the reply is the assistant's)", "messages"
        )
    return conversation, sources


def _has_system(conversation: list[dict[str, str]]) -> int:
    return int(bool(conversation) and conversation[0]["role"] == "system")


def _content(
    message: ChatMessage, role: str, where: str, image_text: str, sources: list[tuple[str, str]]
) -> str:
    content = message.content
    if content is None:
        raise RequestError(400, f"{where}.content is missing", f"{where}.content")
    parts = [content] if isinstance(content, str) else content
    pieces = []
    for number, part in enumerate(parts):
        here = f"{where}.content" + ("" if isinstance(content, str) else f"[{number}]")
        if isinstance(part, str):
            text = part
        elif part.type == "text":
            if part.text is None:
                raise RequestError(400, f"{here} is a text part without text", here)
            text = part.text
        elif part.type == "image_url":
            if role != "user":
                raise RequestError(400, f"{here}: only user messages may hold images", here)
            if part.image_url is None:
                raise RequestError(400, f"{here} is an image_url part without image_url", here)
            sources.append((here, part.image_url.url))
            pieces.append(image_text)
            continue
        else:
            raise RequestError(
                400, f"{here} has type {part.type!r}; supported: 'text', 'image_url'", here
            )
        if image_text and image_text in text:
            raise RequestError(
                400,
                f"{here} contains {image_text!r}; send images as image_url parts",
                here,
            )
        pieces.append(text)
    return "\n".join(pieces)


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    if len(stops) > MAX_STOPS:
        raise RequestError(400, f"stop holds {len(stops)} strings; at most {MAX_STOPS}", "stop")
    return tuple(dict.fromkeys(s for s in stops if s))


def _positions(model: SphinxModel) -> int:
    positions = getattr(model.llm.config, "max_position_embeddings", None)
    return int(positions) if positions else 1 << 30
