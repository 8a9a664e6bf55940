"""One error path for every sphinx command (`sphinx-merge`, `sphinx-data`, `sphinx-pipeline`).

- Bad input (a `ValueError`, `LookupError` or `OSError`, which the packages raise naming the
  offending file, key or value) ends in one line on stderr, `PROG: message`, and exit status 2.
- Anything else ends in one line naming the exception type and exit status 1.
- `--debug` anywhere on the command line (before a bare `--`) shows the traceback instead.
- Usage errors of argparse are one line too (`OneLineArgumentParser`), with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

DEBUG_FLAG = "--debug"
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError)


def one_line(error: BaseException) -> str:
    """The error's message on one line: lines joined by "; ", or by a space after a line that
    ends in ":" (a heading and its list); a `KeyError`'s bare key gets its type name."""
    text = ""
    for line in (line.strip() for line in str(error).splitlines()):
        if not line:
            continue
        if text:
            text += " " if text.endswith(":") else "; "
        text += line
    if isinstance(error, KeyError) or not text:
        return f"{type(error).__name__}: {text}".rstrip(": ")
    return text


def take_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` (options end at a bare `--`), and whether it was there."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    if debug:
        argv.remove(DEBUG_FLAG)
    return argv, debug


def run_command(
    prog: str,
    invoke: Callable[[list[str]], int | None],
    argv: Sequence[str] | None = None,
    *,
    input_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Call `invoke(argv)` and turn what it raises into the exit status and the one line this
    module's docstring describes; returns the exit status."""
    argv, debug = take_debug_flag(sys.argv[1:] if argv is None else argv)
    try:
        return invoke(argv) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (*INPUT_ERRORS, *input_errors) as error:
        if debug:
            raise
        print(f"{prog}: {one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        if debug:
            raise
        print(
            f"{prog}: unexpected {type(error).__name__}: {one_line(error)} "
            f"(run again with {DEBUG_FLAG} for the traceback)",
            file=sys.stderr,
        )
        return 1


def version_text(distribution: str) -> str:
    """`sphinx-llm 0.1.0`, as `--version` prints it."""
    try:
        return f"{distribution} {version(distribution)}"
    except PackageNotFoundError:
        return f"{distribution} (not installed)"


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, got {value}")
    return value


class OneLineArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, `PROG: message (see PROG --help)`,
    with exit status 2; its subcommand parsers are of the same kind."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_common_options(parser: argparse.ArgumentParser, distribution: str) -> None:
    """`--version`, and `--debug` (taken from the command line by `run_command`; declared here
    so that `--help` lists it)."""
    parser.add_argument("--version", action="version", version=version_text(distribution))
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of an error (anywhere in ARGS)"
    )
