"""The `sphinx-pipeline` command: a flat table of subcommands, each a plain function."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image

from sphinx_mllm.core import PluginLoadWarning
from sphinx_mllm.encoders import create_encoder
from sphinx_mllm.pipeline.components import ALL_REGISTRIES, describe_components

app = typer.Typer(
    help="Compose, train and run SPHINX-style multi-modal LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Compose, train and run SPHINX-style multi-modal LLMs."""
    # A callback keeps typer in subcommand mode even while only one subcommand exists.


@app.command()
def components(
    pattern: Annotated[
        str, typer.Argument(help="Shell wildcard over names, e.g. '*dinov2*'.")
    ] = "*",
    kind: Annotated[
        list[str] | None,
        typer.Option(help=f"Only these kinds (repeatable): {', '.join(ALL_REGISTRIES)}."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the registered components of every kind, with the distribution that provides each."""
    with warnings.catch_warnings():
        # Broken plugins are reported below, once, instead of as Python warnings.
        warnings.simplefilter("ignore", PluginLoadWarning)
        infos, errors = describe_components(pattern, kind)
    if as_json:
        payload = {
            "components": [dataclasses.asdict(info) for info in infos],
            "skipped_plugins": [dataclasses.asdict(error) for error in errors],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    name_width = max((len(info.name) for info in infos), default=4)
    dist_width = max((len(info.distribution) for info in infos), default=12)
    for kind_name in kind or ALL_REGISTRIES:
        rows = [info for info in infos if info.kind == kind_name]
        typer.echo(f"{kind_name} ({len(rows)})")
        for info in rows:
            typer.echo(
                f"  {info.name:<{name_width}}  {info.distribution:<{dist_width}}  {info.summary}"
            )
    for error in errors:
        typer.echo(f"skipped: {error}", err=True)


@app.command()
def encode(
    image: Annotated[Path, typer.Argument(help="An image file (any format Pillow reads).")],
    encoder: Annotated[
        list[str], typer.Option("--encoder", "-e", help="Registered encoder name (repeatable).")
    ],
    pretrained: Annotated[
        str | None, typer.Option(help="Weights for every encoder: a path or a library source.")
    ] = None,
) -> None:
    """Encode one image with each named encoder and print the visual tokens it gives."""
    if not image.is_file():
        raise typer.BadParameter(f"no image file at {image}", param_hint="IMAGE")
    photo = Image.open(image)
    typer.echo(f"{image.name}: {photo.width}x{photo.height} {photo.mode}")
    for name in encoder:
        model = create_encoder(name, pretrained=pretrained)
        started = time.perf_counter()
        output = model(model.transform(photo).unsqueeze(0))
        elapsed = time.perf_counter() - started
        grid = "queries" if output.grid is None else f"grid {output.grid[0]}x{output.grid[1]}"
        lead = " + leading token" if output.leading_token else ""
        typer.echo(
            f"  {name:<22} input {model.input_size[0]}x{model.input_size[1]}  tokens "
            f"{tuple(output.tokens.shape[1:])}  {grid}{lead}  {elapsed * 1e3:.1f} ms"
        )


def _register_commands() -> None:
    """Commands kept in their own modules (`sphinx_mllm.pipeline.commands`) add themselves."""
    from sphinx_mllm.pipeline.commands import register_all

    register_all(app)


_register_commands()


def main() -> None:
    """Entry point of the `sphinx-pipeline` console script."""
    app()
