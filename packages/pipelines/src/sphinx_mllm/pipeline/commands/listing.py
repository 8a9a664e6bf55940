"""`sphinx-pipeline list KIND` and `sphinx-pipeline merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

KINDS = {
    "encoders": "encoders",
    "mixers": "mixers",
    "projectors": "projectors",
    "splitters": "view_splitters",
    "mergers": "merge_methods",
    "llms": "language_models",
    "tasks": "task_builders",
    "templates": "chat_templates",
    "presets": "model_presets",
}


def list_components(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    pattern: Annotated[str, typer.Argument(help="Shell wildcard over names.")] = "*",
) -> None:
    """List the registered components of one kind, with a one-line summary each.

    Example: sphinx-pipeline list encoders '*dinov2*'
    """
    from sphinx_mllm.pipeline.components import registry_for

    if kind not in KINDS:
        raise typer.BadParameter(f"expected one of {', '.join(KINDS)}, got {kind!r}")
    registry = registry_for(KINDS[kind])
    names = registry.names(pattern)
    width = max((len(name) for name in names), default=4)
    for name in names:
        typer.echo(f"{name:<{width}}  {registry.info(name).summary}")


def merge(
    first: Annotated[Path, typer.Argument(help="Checkpoint whose weights get `beta`.")],
    second: Annotated[Path, typer.Argument(help="Checkpoint whose weights get `1 - beta`.")],
    out: Annotated[Path, typer.Argument(help="Output checkpoint directory.")],
    beta: Annotated[float, typer.Option(help="Weight of FIRST's LLM weights, in [0, 1].")] = 0.5,
    force: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """SPHINX's weight mix: the LLM weights of two checkpoints of one model,
    beta * FIRST + (1 - beta) * SECOND (in fp32, rounded once); everything else is FIRST's.
    Streams tensor by tensor through sphinx-llm.

    Example: sphinx-pipeline merge runs/real/model runs/synthetic/model runs/mixed --beta 0.5
    """
    from sphinx_mllm.pipeline.mixing import mix_llm_weights

    if not 0.0 <= beta <= 1.0:
        raise typer.BadParameter(f"beta must lie in [0, 1], got {beta}", param_hint="--beta")
    try:
        report = mix_llm_weights(first, second, out, beta=beta, overwrite=force)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(report)


def register(app: typer.Typer) -> None:
    app.command("list")(list_components)
    app.command()(merge)
