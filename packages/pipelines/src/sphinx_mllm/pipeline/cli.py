"""The `sphinx-pipeline` command: a flat table of subcommands, each a plain function.

Errors take the one path of every sphinx command (`sphinx_mllm.core.cli`): bad input ends in one
line naming it and exit status 2, a traceback only with `--debug`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from sphinx_mllm.core import PluginLoadWarning
from sphinx_mllm.core.cli import DEBUG_FLAG, run_command, version_text
from sphinx_mllm.pipeline.commands import add_command
from sphinx_mllm.pipeline.components import (
    KIND_NAMES,
    SHORT_NAMES,
    describe_components,
    registry_for,
)

PROG = "sphinx-pipeline"

app = typer.Typer(
    help="Compose, train and run SPHINX-style multi-modal LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CommandLineError(ValueError):
    """A usage error of the command line (an unknown option, a bad option value)."""


# click's exception base, found through typer's public BadParameter: recent typer releases
# vendor click (typer._click), older ones use click itself
CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(version_text("sphinx-pipeline"))
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(DEBUG_FLAG, help="Show the traceback of an error (anywhere on the line)."),
    ] = False,
) -> None:
    """Compose, train and run SPHINX-style multi-modal LLMs."""
    # A callback keeps typer in subcommand mode even while only one subcommand exists.


def components(
    pattern: Annotated[
        str, typer.Argument(help="Shell wildcard over names, e.g. '*dinov2*'.")
    ] = "*",
    kind: Annotated[
        list[str] | None,
        typer.Option(help=f"Only these kinds (repeatable): {', '.join(KIND_NAMES)}."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the registered components of every kind, with the distribution that provides each."""
    kinds = [registry_for(name).kind for name in kind] if kind else list(KIND_NAMES.values())
    with warnings.catch_warnings():
        # Broken plugins are reported below, once, instead of as Python warnings.
        warnings.simplefilter("ignore", PluginLoadWarning)
        infos, errors = describe_components(pattern, kinds)
    if as_json:
        payload = {
            "components": [dataclasses.asdict(info) for info in infos],
            "skipped_plugins": [dataclasses.asdict(error) for error in errors],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    name_width = max((len(info.name) for info in infos), default=4)
    dist_width = max((len(info.distribution) for info in infos), default=12)
    for kind_name in kinds:
        rows = [info for info in infos if info.kind == kind_name]
        typer.echo(f"{SHORT_NAMES[kind_name]} ({len(rows)})")
        for info in rows:
            typer.echo(
                f"  {info.name:<{name_width}}  {info.distribution:<{dist_width}}  {info.summary}"
            )
    for error in errors:
        typer.echo(f"skipped: {error}", err=True)


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
    from sphinx_mllm.encoders import create_encoder
    from sphinx_mllm.pipeline.images import open_image

    photo = open_image(image)
    models = [(name, create_encoder(name, pretrained=pretrained)) for name in encoder]
    typer.echo(f"{image.name}: {photo.width}x{photo.height} {photo.mode}")
    for name, model in models:
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

    add_command(app, components)
    add_command(app, encode)
    register_all(app)


_register_commands()


def _invoke(argv: list[str]) -> int:
    """Run the typer app without its own error handling, usage errors made one line."""
    try:
        result = app(args=argv, prog_name=PROG, standalone_mode=False)
    except typer.Abort:
        raise KeyboardInterrupt from None
    except CLICK_EXCEPTION as error:
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help())  # `sphinx-pipeline` alone: the help, as --help
            return 0
        command = context.command_path if context is not None else PROG
        raise CommandLineError(f"{error.format_message()} (see {command} --help)") from error
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `sphinx-pipeline` console script."""
    sys.exit(run_command(PROG, _invoke, argv))
