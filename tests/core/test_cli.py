"""The one error path of the sphinx commands: one line and status 2 for bad input, one line and
status 1 for the unexpected, the traceback with --debug, one-line usage errors."""

import pytest

from sphinx_mllm.core.cli import (
    OneLineArgumentParser,
    add_common_options,
    one_line,
    run_command,
    take_debug_flag,
)


def _raising(error):
    def invoke(argv):
        raise error

    return invoke


@pytest.mark.parametrize(
    "error",
    [ValueError("config.yaml: weight must be a number"), FileNotFoundError("No file at x"),
     KeyError("categories"), IndexError("list index out of range")],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(capsys, error):
    assert run_command("tool", _raising(error), []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: ") and "Traceback" not in err


def test_a_multi_line_message_is_joined_and_a_bare_key_gets_its_type():
    assert one_line(ValueError("first\n  second\n")) == "first; second"
    assert one_line(ValueError("problems:\n  one\n  two")) == "problems: one; two"
    assert one_line(KeyError("categories")) == "KeyError: 'categories'"


def test_the_unexpected_is_one_line_and_status_1(capsys):
    assert run_command("tool", _raising(RuntimeError("boom")), []) == 1
    err = capsys.readouterr().err
    assert err == "tool: unexpected RuntimeError: boom (run again with --debug for the traceback)\n"


def test_debug_raises_and_is_taken_off_the_command_line():
    seen = []
    assert run_command("tool", lambda argv: seen.append(argv), ["a", "--debug", "b"]) == 0
    assert seen == [["a", "b"]]
    with pytest.raises(ValueError, match="bad"):
        run_command("tool", _raising(ValueError("bad")), ["--debug"])
    assert take_debug_flag(["x", "--", "--debug"]) == (["x", "--", "--debug"], False)


def test_usage_errors_are_one_line_with_status_2(capsys):
    parser = OneLineArgumentParser(prog="tool")
    add_common_options(parser, "sphinx-core")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("go").add_argument("--count", type=int)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["go", "--count", "many"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'many'" in err and err.startswith("tool go: ")
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("sphinx-core 0.1.0")
