"""The HTTP server of `sphinx-pipeline serve`: OpenAI's chat completions (`POST
/v1/chat/completions`, plain or streamed as server-sent events), `GET /v1/models`, and a small
chat page at `/` that draws the boxes of the answers on the uploaded image (`POST /boxes` finds
them in the image's pixels).

Requests queue: one generation runs at a time, on one worker thread, so the event loop keeps
answering (and streaming) while the model works. Every request is checked before it waits in the
queue (`chat_requests`: its JSON, roles, images, prompt length), and what is wrong comes back as
a 4xx with an OpenAI-style body (`limits`). Images: `image_inputs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from sphinx_mllm.pipeline.config import GenerationDefaults
from sphinx_mllm.pipeline.serving.chat_requests import Prepared, prepare, read_body, read_request
from sphinx_mllm.pipeline.serving.limits import MiB, RequestError, ServerLimits, error_response
from sphinx_mllm.pipeline.serving.protocol import (
    BoxesRequest,
    BoxesResponse,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
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
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_queue: int = 32,
) -> FastAPI:
    """The server's app for `model` (which needs its processor and tokenizer). `max_new_tokens`,
    `temperature` (0: greedy) and `top_p` are the defaults of requests that give none; None
    takes the model's own (its config's `generation`)."""
    if model.processor is None or model.tokenizer is None:
        raise ValueError("serving needs a model with its processor and tokenizer")
    decoding = GenerationDefaults.of(model.model_config).overridden(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
    )
    if image_root is not None and not Path(image_root).is_dir():
        raise NotADirectoryError(f"image root {image_root} is not a directory")
    limits = ServerLimits(
        image_root=None if image_root is None else Path(image_root),
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        max_images=max_images,
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
        prepared = await run_in_threadpool(prepare, model, chat, limits, decoding)
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
