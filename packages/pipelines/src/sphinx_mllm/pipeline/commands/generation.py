"""`sphinx-pipeline generate` and `sphinx-pipeline chat`: ask a checkpoint about an image, once
or turn after turn. CKPT may also name a model preset (`demo`), built with random weights, to
try the plumbing without a checkpoint. Options left out (`--temperature`, `--top-p`,
`--max-new-tokens`) take the model's decoding defaults (its config's `generation`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sphinx_mllm.pipeline.commands import add_command

if TYPE_CHECKING:
    from PIL import Image

    from sphinx_mllm.pipeline.config import GenerationDefaults
    from sphinx_mllm.pipeline.model import SphinxModel

Checkpoint = Annotated[
    str, typer.Argument(help="A checkpoint directory (save_pretrained), or a model preset name.")
]
ImageOption = Annotated[
    Path | None, typer.Option("--image", "-i", help="An image file (any format Pillow reads).")
]
MaxNewTokens = Annotated[
    int | None,
    typer.Option(min=1, help="Most tokens to generate per reply (default: the model's)."),
]
Temperature = Annotated[
    float | None,
    typer.Option(min=0.0, help="Sampling temperature; 0 decodes greedily (default: the model's)."),
]
TopP = Annotated[
    float | None,
    typer.Option(
        max=1.0,
        help="Nucleus sampling: keep the fewest tokens holding this mass, in (0, 1] "
        "(default: the model's).",
    ),
]
TopK = Annotated[
    int | None, typer.Option(min=1, help="Sampling: keep only the k most likely tokens.")
]
RepetitionPenalty = Annotated[
    float, typer.Option(min=0.0, help="Penalty (> 1) for tokens already in the conversation.")
]
Beams = Annotated[int, typer.Option(min=1, help="Beam search width (1: no beam search).")]
Seed = Annotated[
    int | None, typer.Option(help="Seed for sampling (and for a preset's random weights).")
]


def generate(
    checkpoint: Checkpoint,
    prompt: Annotated[str, typer.Argument(help="The question or instruction.")],
    image: ImageOption = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepetitionPenalty = 1.0,
    num_beams: Beams = 1,
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
    check_top_p(top_p)
    photo = _open_image(image)
    model = load_model_or_preset(checkpoint, seed)
    from sphinx_mllm.pipeline.generation import answer

    decoding = model_decoding(model, max_new_tokens, temperature, top_p)
    options = _generation_options(decoding, top_k, repetition_penalty, num_beams, seed)
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
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = None,
) -> None:
    """Talk with a model about an image: one question per line on stdin, the whole conversation
    kept as context, until end of input or a line reading `exit`. Replies stream as they are
    generated; at a terminal, lines can be edited and earlier questions recalled (arrow keys).

    Example: sphinx-pipeline chat ./my-sphinx --image cat.jpg
    """
    check_top_p(top_p)
    photo = _open_image(image)
    model = load_model_or_preset(checkpoint, seed)
    decoding = model_decoding(model, max_new_tokens, temperature, top_p)
    options = _generation_options(decoding, top_k, repetition_penalty, 1, seed)
    history: list[dict[str, str]] = []
    read_line = _line_reader()
    typer.echo("Type a question per line; 'exit' or end of input stops.", err=True)
    while True:
        line = read_line()
        if line is None:
            break
        question = line.strip()
        if question in ("exit", "quit"):
            break
        if not question:
            continue
        turns = [*history, {"from": "human", "value": question}]
        reply = _reply(model, turns, photo, options)
        if reply:  # a template cannot render an empty reply: that exchange is not kept
            history += [turns[-1], {"from": "gpt", "value": reply}]


def _line_reader():
    """Reads one question per call (None at end of input): at a terminal with `readline`'s line
    editing and history, else plain lines from stdin (piped questions get the replies alone)."""
    if not sys.stdin.isatty():
        return lambda: sys.stdin.readline() or None
    if importlib.util.find_spec("readline") is not None:  # not on every platform (Windows)
        importlib.import_module("readline")  # importing it gives input() editing and history

    def read() -> str | None:
        try:
            return input("> ")
        except EOFError:
            return None

    return read


def _reply(
    model: SphinxModel,
    turns: list[dict[str, str]],
    photo: Image.Image | None,
    options: dict[str, Any],
) -> str:
    """The model's next reply in a conversation about `photo` (given with the first turn),
    streamed to stdout as it is generated."""
    from sphinx_mllm.pipeline.generation import ReplyStreamer
    from sphinx_mllm.pipeline.generation import generate as generate_tokens

    images = [[] if photo is None else [photo]]
    inputs = model.processor([turns], images, generation=True).to(model.device)
    pieces: list[str] = []

    def write(piece: str) -> None:
        if not pieces:  # the reply is printed without its leading spaces
            piece = piece.lstrip()
            if not piece:
                return
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()

    streamer = ReplyStreamer(model.processor, write)
    output = generate_tokens(model, **inputs, streamer=streamer, **options)
    reply = (output.texts or [""])[0].strip()
    sys.stdout.write(reply[len("".join(pieces).strip()) :] + "\n")  # what the stream held back
    sys.stdout.flush()
    return reply


def _open_image(path: Path | None) -> Image.Image | None:
    from sphinx_mllm.pipeline.images import open_image

    return None if path is None else open_image(path)


def load_model_or_preset(checkpoint: str, seed: int | None) -> SphinxModel:
    """The checkpoint directory's model, or a preset built with random weights (`seed`)."""
    import torch

    from sphinx_mllm.pipeline.training.session import load_model

    if seed is not None:
        torch.manual_seed(seed)
    return load_model(checkpoint, announce=lambda line: typer.echo(line, err=True))


def model_decoding(
    model: SphinxModel,
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
) -> GenerationDefaults:
    """The model's decoding defaults (its config's `generation`) with the options the user
    gave; None leaves the model's."""
    from sphinx_mllm.pipeline.config import GenerationDefaults

    return GenerationDefaults.of(model.model_config).overridden(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
    )


def _generation_options(
    decoding: GenerationDefaults,
    top_k: int | None,
    repetition_penalty: float,
    num_beams: int,
    seed: int | None,
) -> dict[str, Any]:
    """The keyword arguments of `generation.generate`: greedy at temperature 0, else sampling."""
    sampling = decoding.temperature > 0
    options: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "do_sample": sampling,
        "repetition_penalty": repetition_penalty,
        "num_beams": num_beams,
    }
    if sampling:
        options.update(
            temperature=decoding.temperature, top_p=decoding.top_p, top_k=top_k, seed=seed
        )
    return options


def check_top_p(top_p: float | None) -> None:
    if top_p is not None and not 0 < top_p <= 1:
        raise typer.BadParameter(f"must be in (0, 1], got {top_p}", param_hint="'--top-p'")


def register(app: typer.Typer) -> None:
    add_command(app, generate)
    add_command(app, chat)
