"""Subcommands of `sphinx-pipeline` that live in their own modules: each module defines
`register(app)`, which adds its commands to the typer app with `add_command`. Modules import
heavy libraries (torch, transformers) inside the command functions, so `--help` stays fast."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

import typer

COMMAND_MODULES = (
    "describe",
    "generation",
    "llava",
    "accessory",
    "training",
    "listing",
    "serve",
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def summary(function: Callable) -> str:
    """The first sentence of a command's docstring, on one line: its entry in `--help`'s list
    (click would cut the first paragraph at 45 characters, mid-sentence)."""
    paragraph = (function.__doc__ or "").strip().split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    return SENTENCE_END.split(text, maxsplit=1)[0]


def add_command(app: typer.Typer, function: Callable, name: str | None = None) -> None:
    app.command(name, short_help=summary(function))(function)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"sphinx_mllm.pipeline.commands.{name}")
        module.register(app)
