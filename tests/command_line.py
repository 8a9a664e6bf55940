"""Running a sphinx command in process as a user would: its exit status, stdout and stderr."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_main(main: Callable, *args: object) -> Outcome:
    """`main(args)` (an entry point that returns or raises SystemExit with the status)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main([str(arg) for arg in args])
        except SystemExit as exit:
            status = exit.code
    return Outcome(int(status or 0), out.getvalue(), err.getvalue())


def sphinx_pipeline(*args: object) -> Outcome:
    from sphinx_mllm.pipeline.cli import main

    return run_main(main, *args)
