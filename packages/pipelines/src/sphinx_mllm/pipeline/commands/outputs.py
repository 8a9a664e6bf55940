"""What the commands that write a model directory share: the early check of the output, the
dtype option, and the summary table they print."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def check_output_early(out: Path, *, force: bool, writer: str, inputs: Sequence[Path]) -> None:
    """Refuse `out` before a long job rather than after it: it exists and `--force` was not
    given, or it is not an earlier output of `writer`, or it holds one of `inputs`. (The writer
    checks again under the output's lock.)"""
    from sphinx_mllm.core.outputs import check_replaceable

    if out.exists():
        if not force:
            raise FileExistsError(f"{out} exists; pass --force to replace it")
        check_replaceable(out.resolve(), writer, inputs=list(inputs))


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPE_CHOICES:
        raise typer.BadParameter(
            f"expected one of {DTYPE_CHOICES}, got {dtype!r}", param_hint="--dtype"
        )


def echo_rows(rows: Sequence[tuple[str, str]]) -> None:
    """`label  description` lines, the labels padded to one width, indented under a heading."""
    width = max(len(label) for label, _ in rows)
    for label, description in rows:
        typer.echo(f"  {label:<{width}}  {description}")
