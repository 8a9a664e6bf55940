"""`sphinx-pipeline generate` and `sphinx-pipeline chat`: ask a checkpoint about an image, once
or turn after turn. CKPT may also name a model preset (`demo`), built with random weights, to
try the plumbing without a checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sphinx_mllm.pipeline.commands import add_command

if TYPE_CHECKING:
    from PIL import Image

    from sphinx_mllm.pipeline.model import SphinxModel

Checkpoint = Annotated[
    str, typer.Argument(help="A checkpoint directory (save_pretrained), or a model preset name.")
]
ImageOption = Annotated[
    Path | None, typer.Option("--image", "-i", help="An image file (any format Pillow reads).")
]
MaxNewTokens = Annotated[int, typer.Option(min=1, help="Most tokens to generate per reply.")]
Temperature = Annotated[
    float, typer.Option(min=0.0, help="Sampling temperature; 0 decodes greedily.")
]
TopP = Annotated[
    float,
    typer.Option(
        max=1.0, help="Nucleus sampling: keep the fewest tokens holding this mass, in (0, 1]."
    ),
]
Seed = Annotated[
    int | None, typer.Option(help="Seed for sampling (and for a preset's random weights).")
]


def generate(
    checkpoint: Checkpoint,
    prompt: Annotated[str, typer.Argument(help="The question or instruction.")],
    image: ImageOption = None,
    max_new_tokens: MaxNewTokens = 64,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
    draw: Annotated[
        Path | None, typer.Option(help="Write the image with the answer's boxes drawn here.")
    ] = None,
) -> None:
    """Answer one prompt about an image and print the reply.

    Example: sphinx-pipeline generate ./my-sphinx --image cat.jpg "Where is the cat?" --draw out.png
    """
    if draw is not None and image is None:
        raise typer.BadParameter("--draw needs --image: boxes are drawn on that image")
    _check_top_p(top_p)
    photo = _open_image(image)
    model = _load_model(checkpoint, seed)
    from sphinx_mllm.pipeline.generation import answer

    options = _generation_options(model, max_new_tokens, temperature, top_p, seed)
    reply = answer(model, None if photo is None else [photo], [prompt], **options)
    typer.echo(reply[0])
    if draw is not None and photo is not None:
        from sphinx_mllm.pipeline.drawing import draw_boxes, find_boxes

        count = len(find_boxes(reply[0], photo.size))
        draw_boxes(photo, reply[0]).save(draw)
        typer.echo(f"drew {count} box(es) on {draw}", err=True)


def chat(
    checkpoint: Checkpoint,
    image: ImageOption = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
) -> None:
    """Talk with a model about an image: one question per line on stdin, the whole conversation
    kept as context, until end of input or a line reading `exit`.

    Example: sphinx-pipeline chat ./my-sphinx --image cat.jpg
    """
    _check_top_p(top_p)
    photo = _open_image(image)
    model = _load_model(checkpoint, seed)
    options = _generation_options(model, max_new_tokens, temperature, top_p, seed)
    history: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    typer.echo("Type a question per line; 'exit' or end of input stops.", err=True)
    while True:
        if interactive:  # piped questions get the replies alone, one per line
            typer.echo("> ", nl=False)
        line = sys.stdin.readline()
        question = line.strip()
        if not line or question in ("exit", "quit"):
            break
        if not question:
            continue
        turns = [*history, {"from": "human", "value": question}]
        reply = _reply(model, turns, photo, options)
        typer.echo(reply)
        if reply:  # a template cannot render an empty reply: that exchange is not kept
            history += [turns[-1], {"from": "gpt", "value": reply}]


def _reply(
    model: SphinxModel,
    turns: list[dict[str, str]],
    photo: Image.Image | None,
    options: dict[str, Any],
) -> str:
    """The model's next reply in a conversation about `photo` (given with the first turn)."""
    from sphinx_mllm.pipeline.generation import generate as generate_tokens
    from sphinx_mllm.pipeline.generation import left_pad, render_prompt

    prompt = render_prompt(
        model, turns, image_count=0 if photo is None else 1,
        image_size=None if photo is None else photo.size,
    )  # fmt: skip
    input_ids, attention_mask = left_pad([prompt], model.pad_token_id)
    pixels = None if photo is None else [model.preprocess(photo)]
    output = generate_tokens(model, input_ids, pixels, attention_mask=attention_mask, **options)
    return (output.texts or [""])[0].strip()


def _open_image(path: Path | None) -> Image.Image | None:
    from sphinx_mllm.pipeline.images import open_image

    return None if path is None else open_image(path)


def _load_model(checkpoint: str, seed: int | None) -> SphinxModel:
    """The checkpoint directory's model, or a preset built with random weights (`seed`)."""
    import torch

    from sphinx_mllm.pipeline.training.session import load_model

    if seed is not None:
        torch.manual_seed(seed)
    return load_model(checkpoint, announce=lambda line: typer.echo(line, err=True))


def _generation_options(
    model: SphinxModel, max_new_tokens: int, temperature: float, top_p: float, seed: int | None
) -> dict[str, Any]:
    import torch

    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        generator = torch.Generator(device=model.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        options.update(temperature=temperature, top_p=top_p, generator=generator)
    return options


def _check_top_p(top_p: float) -> None:
    if not 0 < top_p <= 1:
        raise typer.BadParameter(f"must be in (0, 1], got {top_p}", param_hint="'--top-p'")


def register(app: typer.Typer) -> None:
    add_command(app, generate)
    add_command(app, chat)
