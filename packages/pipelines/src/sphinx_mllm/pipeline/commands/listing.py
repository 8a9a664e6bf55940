"""`sphinx-pipeline list KIND` and `sphinx-pipeline merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sphinx_mllm.pipeline.commands import add_command
from sphinx_mllm.pipeline.components import KIND_NAMES


def list_components(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(KIND_NAMES)}.")],
    pattern: Annotated[str, typer.Argument(help="Shell wildcard over names.")] = "*",
) -> None:
    """List the registered components of one kind, with a one-line summary each.

    Example: sphinx-pipeline list encoders '*dinov2*'
    """
    from sphinx_mllm.pipeline.components import registry_for

    registry = registry_for(kind)
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
    report = mix_llm_weights(first, second, out, beta=beta, overwrite=force)
    typer.echo(report)


def register(app: typer.Typer) -> None:
    add_command(app, list_components, "list")
    add_command(app, merge)
