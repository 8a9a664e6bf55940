"""`sphinx-pipeline serve`: a checkpoint behind an OpenAI-compatible chat-completions API
(`POST /v1/chat/completions`, streaming too) and a chat page at `/` that draws the answers'
boxes on the uploaded image. CKPT may also name a model preset (`demo`), built with random
weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sphinx_mllm.pipeline.commands import add_command
from sphinx_mllm.pipeline.commands.generation import (
    Checkpoint,
    MaxNewTokens,
    Seed,
    Temperature,
    TopP,
    check_top_p,
    load_model_or_preset,
)

MiB = 1 << 20


def serve(
    checkpoint: Checkpoint,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The port to listen on.")] = 8000,
    image_root: Annotated[
        Path | None,
        typer.Option(
            help="Requests may name image files under this folder (none outside it); without "
            "it, images come as data URLs only."
        ),
    ] = None,
    max_image_mb: Annotated[
        float, typer.Option(min=0.0, help="Largest image a request may send, in MiB.")
    ] = 20.0,
    max_image_pixels: Annotated[
        int, typer.Option(min=1, help="Largest image a request may send, in pixels (w x h).")
    ] = 4096 * 4096,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="The model's id in /v1/models (default: CKPT's name)."),
    ] = None,
    seed: Seed = None,
) -> None:
    """Serve a model over HTTP: OpenAI's chat completions at /v1/chat/completions and a chat
    page at /. One generation runs at a time; other requests wait their turn. Requests that
    give no max_tokens, temperature or top_p get --max-new-tokens, --temperature (0: greedy)
    and --top-p, and where those are not given either, the model's decoding defaults.

    Example: sphinx-pipeline serve ./my-sphinx --port 8000 --image-root ./images
    """
    check_top_p(top_p)
    if image_root is not None and not image_root.is_dir():
        raise NotADirectoryError(f"image root {image_root} is not a directory")
    model = load_model_or_preset(checkpoint, seed)
    import uvicorn

    from sphinx_mllm.pipeline.serving import create_app

    app = create_app(
        model,
        model_name=model_name or Path(checkpoint).name or checkpoint,
        image_root=image_root,
        max_image_bytes=int(max_image_mb * MiB),
        max_image_pixels=max_image_pixels,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
    )
    typer.echo(f"serving {checkpoint} at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    add_command(app, serve)
