"""The HTTP server of `sphinx-pipeline serve`: OpenAI's chat completions (`POST
/v1/chat/completions`, plain or streamed as server-sent events), `GET /v1/models`, and a small
chat page at `/` that draws the boxes of the answers on the uploaded image (`POST /boxes` finds
them in the image's pixels).

Requests queue: one generation runs at a time, on one worker thread, so the event loop keeps
answering (and streaming) while the model works. Every request is checked before it waits in the
queue (its JSON, roles, images, prompt length), and what is wrong comes back as a 4xx with an
OpenAI-style body, `{"error": {"message": ..., "type": "invalid_request_error", ...}}`.

Images come as base64 data URLs, or as file paths (or `file://` URLs) relative to the image root
the server was given; nothing is fetched over the network, nothing outside that root is read,
and images over the byte or pixel limits are refused (413).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError

from sphinx_mllm.data.image_paths import ImagePathError, image_path_under
from sphinx_mllm.pipeline.serving.protocol import (
    BoxesRequest,
    BoxesResponse,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    PixelBoxOut,
    ReplyMessage,
    Usage,
)

if TYPE_CHECKING:
    from sphinx_mllm.pipeline.model import SphinxModel
    from sphinx_mllm.pipeline.processor import ModelInputs

MiB = 1 << 20
RequestModel = TypeVar("RequestModel", bound=BaseModel)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4


class RequestError(Exception):
    """A request the server refuses: the HTTP status and the message sent back."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for. `image_root` None: no image files are read at all."""

    image_root: Path | None = None
    max_image_bytes: int = 20 * MiB
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    max_queue: int = 32

    @property
    def max_body_bytes(self) -> int:
        """A request holds at most `max_images` base64 images and 1 MiB of everything else."""
        return self.max_images * (self.max_image_bytes * 4 // 3 + 4) + MiB


@dataclass
class Prepared:
    """A checked request: the model's inputs and the options for `generate`."""

    inputs: ModelInputs
    options: dict[str, Any]
    stops: tuple[str, ...]
    model: str
    include_usage: bool = False


@dataclass
class GenerationQueue:
    """One generation at a time on a single worker thread; `max_queue` requests may wait."""

    max_queue: int
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="sphinx-generate")
    )
    pending: int = 0

    def check(self) -> None:
        """Refuse (503) a request that would find the queue full."""
        if self.pending > self.max_queue:
            raise RequestError(503, f"the server is busy ({self.pending} requests queued)")

    def submit(self, job: Callable[[], Any]) -> asyncio.Future:
        self.check()
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, job)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: asyncio.Future) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: a stream cancelled by its client ends in _Cancelled


def create_app(
    model: SphinxModel,
    *,
    model_name: str = "sphinx",
    image_root: str | Path | None = None,
    max_image_bytes: int = 20 * MiB,
    max_image_pixels: int = 4096 * 4096,
    max_images: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    max_queue: int = 32,
) -> FastAPI:
    """The server's app for `model` (which needs its processor and tokenizer). `max_new_tokens`
    and `temperature` are the defaults of requests that give none (0: greedy)."""
    if model.processor is None or model.tokenizer is None:
        raise ValueError("serving needs a model with its processor and tokenizer")
    if image_root is not None and not Path(image_root).is_dir():
        raise NotADirectoryError(f"image root {image_root} is not a directory")
    limits = ServerLimits(
        image_root=None if image_root is None else Path(image_root),
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        max_images=max_images,
        max_queue=max_queue,
    )
    queue = GenerationQueue(max_queue)
    created = int(time.time())
    page = (files("sphinx_mllm.pipeline.serving") / "static" / "index.html").read_text("utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="sphinx-pipeline serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def refused(_request: Request, error: RequestError) -> JSONResponse:
        return error_response(error.status, error.message, error.param)

    @app.exception_handler(404)
    async def not_found(request: Request, _error: Exception) -> JSONResponse:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}")

    @app.exception_handler(405)
    async def bad_method(request: Request, _error: Exception) -> JSONResponse:
        return error_response(405, f"{request.url.path} does not take {request.method}")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=model_name, created=created)]).model_dump()

    @app.post("/boxes")
    async def boxes(request: Request) -> dict[str, Any]:
        from sphinx_mllm.pipeline.drawing import find_boxes

        asked = read_request(BoxesRequest, await read_body(request, MiB))
        found = find_boxes(asked.text, (asked.width, asked.height))
        out = [PixelBoxOut(phrase=b.phrase, box=tuple(b.box)) for b in found]
        return BoxesResponse(boxes=out).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        chat = read_request(ChatCompletionRequest, await read_body(request, limits.max_body_bytes))
        prepared = await run_in_threadpool(
            prepare, model, chat, limits, max_new_tokens, temperature
        )
        if chat.stream:
            queue.check()  # a full queue is a 503, before the stream's status line is sent
            return StreamingResponse(
                stream(model, prepared, queue),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        output = await queue.submit(lambda: run_generation(model, prepared))
        reply = (output.texts or [""])[0].strip()
        completion = ChatCompletion(
            id=completion_id(),
            created=int(time.time()),
            model=prepared.model,
            choices=[Choice(message=ReplyMessage(content=reply), finish_reason=finish(output))],
            usage=usage(prepared, output),
        )
        return completion.model_dump()

    return app


# -- reading requests ------------------------------------------------------------------------------


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


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
    default_max_tokens: int,
    default_temperature: float,
) -> Prepared:
    """Check a request and make the model's inputs (images decoded, prompt rendered)."""
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
    temperature = default_temperature if chat.temperature is None else chat.temperature
    options: dict[str, Any] = {
        "max_new_tokens": asked or min(default_max_tokens, room),
        "do_sample": temperature > 0,
        "repetition_penalty": chat.repetition_penalty or 1.0,
    }
    if temperature > 0:
        options.update(
            temperature=temperature, top_p=chat.top_p or 1.0, top_k=chat.top_k, seed=chat.seed
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


# -- images ----------------------------------------------------------------------------------------


def load_image(url: str, where: str, limits: ServerLimits) -> Image.Image:
    """The image a request names: a base64 data URL, or a file under the image root."""
    scheme = urlsplit(url).scheme.lower() if not url.startswith("data:") else "data"
    if scheme == "data":
        data = _data_url(url, where, limits)
    elif scheme in ("http", "https"):
        raise RequestError(
            400,
            f"{where}: this server fetches no images over {scheme}; send the image as a "
            "data URL (data:image/png;base64,...) or a path under the server's image root",
            where,
        )
    elif scheme in ("", "file"):
        data = _image_file(url, where, limits)
    else:
        raise RequestError(
            400,
            f"{where}: unsupported image URL scheme {scheme!r}; use a data URL or a path",
            where,
        )
    return _decode(data, where, limits)


def _data_url(url: str, where: str, limits: ServerLimits) -> bytes:
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise RequestError(
            400, f"{where}: a data URL must be base64 (data:image/png;base64,...)", where
        )
    media = header[: -len(";base64")].split(";")[0].strip().lower()
    if media and not media.startswith("image/"):
        raise RequestError(400, f"{where}: the data URL holds {media!r}, not an image", where)
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > limits.max_image_bytes + 3:
        raise _too_big(where, len(payload) // 4 * 3, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(
            400, f"{where}: the data URL is not valid base64: {error}", where
        ) from error
    if len(data) > limits.max_image_bytes:
        raise _too_big(where, len(data), limits)
    return data


def _image_file(url: str, where: str, limits: ServerLimits) -> bytes:
    if url.lower().startswith("file:"):
        name = url[len("file:") :]
        name = unquote(name[2:] if name.startswith("//") else name)
    else:
        name = url
    if limits.image_root is None:
        raise RequestError(
            403,
            f"{where}: this server reads no image files (it was started without --image-root); "
            "send the image as a data URL",
            where,
        )
    try:
        path = image_path_under(limits.image_root, name)
    except ImagePathError as error:
        raise RequestError(403, f"{where}: {error}", where) from error
    if not path.is_file():
        raise RequestError(
            400, f"{where}: image {name!r} is not a file under the image root", where
        )
    size = path.stat().st_size
    if size > limits.max_image_bytes:
        raise _too_big(where, size, limits)
    return path.read_bytes()


def _too_big(where: str, size: int, limits: ServerLimits) -> RequestError:
    return RequestError(
        413, f"{where}: the image is {size} bytes; the limit is {limits.max_image_bytes}", where
    )


def _decode(data: bytes, where: str, limits: ServerLimits) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > limits.max_image_pixels:
                raise RequestError(
                    413,
                    f"{where}: the image is {width}x{height} pixels; the limit is "
                    f"{limits.max_image_pixels} pixels",
                    where,
                )
            return opened.convert("RGB")
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"{where}: the image is too large: {error}", where) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise RequestError(400, f"{where}: cannot read the image: {error}", where) from error


# -- generation ------------------------------------------------------------------------------------


class _Cancelled(Exception):
    """Raised inside a streamed generation whose client went away, to end it early."""


def run_generation(model: SphinxModel, prepared: Prepared, streamer: Any = None) -> Any:
    from sphinx_mllm.pipeline.generation import generate

    return generate(model, **prepared.inputs, streamer=streamer, **prepared.options)


def finish(output: Any) -> str:
    return "length" if output.finished_by[0] == "length" else "stop"


def usage(prepared: Prepared, output: Any) -> Usage:
    prompt = int(prepared.inputs.input_ids.shape[1])
    completion = int(output.lengths[0])
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class StreamText:
    """The pieces of a reply as deltas whose concatenation is the reply stripped of surrounding
    whitespace (what a plain completion returns): trailing whitespace waits for what follows."""

    def __init__(self) -> None:
        self.text = ""
        self.sent = ""

    def add(self, piece: str) -> str:
        self.text += piece
        visible = self.text.strip()
        new = visible[len(self.sent) :] if visible.startswith(self.sent) else ""
        self.sent += new
        return new

    def rest(self, reply: str) -> str:
        return reply[len(self.sent) :] if reply.startswith(self.sent) else ""


_END = object()


async def stream(
    model: SphinxModel, prepared: Prepared, queue: GenerationQueue
) -> AsyncIterator[str]:
    """Server-sent events of `chat.completion.chunk`s, then `data: [DONE]`; a failure once the
    stream has started comes as an event holding an `error`."""
    from sphinx_mllm.pipeline.generation import ReplyStreamer

    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()

    def write(piece: str) -> None:
        if cancelled.is_set():
            raise _Cancelled
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    def job() -> Any:
        if cancelled.is_set():
            return None
        streamer = ReplyStreamer(model.processor, write, stop_strings=prepared.stops)
        return run_generation(model, prepared, streamer)

    ident, created = completion_id(), int(time.time())

    def event(delta: Delta, reason: str | None = None, **extra: Any) -> str:
        chunk = ChatCompletionChunk(
            id=ident,
            created=created,
            model=prepared.model,
            choices=[ChunkChoice(delta=delta, finish_reason=reason)],
            **extra,
        )
        return _chunk_event(chunk)

    try:
        future = queue.submit(job)
    except RequestError as error:
        yield _error_event(error.message, "server_error")
        yield "data: [DONE]\n\n"
        return
    future.add_done_callback(lambda _f: pieces.put_nowait(_END))
    try:
        yield event(Delta(role="assistant", content=""))
        text = StreamText()
        while (piece := await pieces.get()) is not _END:
            new = text.add(piece)
            if new:
                yield event(Delta(content=new))
        try:
            output = future.result()
        except Exception as error:  # the status line is sent: the error goes in the stream
            yield _error_event(
                f"generation failed: {type(error).__name__}: {error}", "server_error"
            )
            yield "data: [DONE]\n\n"
            return
        rest = text.rest((output.texts or [""])[0].strip())
        yield event(Delta(content=rest) if rest else Delta(), finish(output))
        if prepared.include_usage:
            chunk = ChatCompletionChunk(
                id=ident,
                created=created,
                model=prepared.model,
                choices=[],
                usage=usage(prepared, output),
            )
            yield _chunk_event(chunk)
        yield "data: [DONE]\n\n"
    finally:
        cancelled.set()


def _error_event(message: str, kind: str) -> str:
    return "data: " + json.dumps({"error": {"message": message, "type": kind}}) + "\n\n"


def _chunk_event(chunk: ChatCompletionChunk) -> str:
    """One chunk as an event, without the null fields OpenAI leaves out (a delta's role after
    the first chunk, the usage of all but the last) but with `finish_reason: null`."""
    data = chunk.model_dump()
    if data["usage"] is None:
        del data["usage"]
    for choice in data["choices"]:
        choice["delta"] = {
            key: value for key, value in choice["delta"].items() if value is not None
        }
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
