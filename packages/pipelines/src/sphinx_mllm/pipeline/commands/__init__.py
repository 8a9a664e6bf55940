"""Subcommands of `sphinx-pipeline` that live in their own modules: each module defines
`register(app)`, which adds its commands to the typer app. Modules import heavy libraries (torch,
transformers) inside the command functions, so `--help` stays fast."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = ("describe", "generation", "llava", "training", "listing")


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"sphinx_mllm.pipeline.commands.{name}")
        module.register(app)
