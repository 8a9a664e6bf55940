"""`sphinx-pipeline describe PRESET`: the component table, parameter counts and visual tokens."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sphinx_mllm.pipeline.commands import add_command


def describe(
    preset: Annotated[
        str, typer.Argument(help="A model preset (sphinx-pipeline list presets) or a config YAML.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Describe a model without building its weights (real-size presets on the meta device).

    Example: sphinx-pipeline describe sphinx --json
    """
    from sphinx_mllm.pipeline.description import describe as describe_preset
    from sphinx_mllm.pipeline.description import format_description

    description = describe_preset(preset)
    typer.echo(json.dumps(description, indent=2) if as_json else format_description(description))


def register(app: typer.Typer) -> None:
    add_command(app, describe)
