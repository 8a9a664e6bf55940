"""The `sphinx-pipeline` command line (typer), exercised in process."""

from typer.testing import CliRunner

from sphinx_mllm.pipeline.cli import app


def test_components_filters_by_kind_and_pattern():
    result = CliRunner().invoke(app, ["components", "linear*", "--kind", "projectors"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "projectors (2)"
    assert [line.split()[0] for line in lines[1:]] == ["linear", "linear_ln"]
    assert all("sphinx-mixer" in line for line in lines[1:])


def test_components_rejects_an_unknown_kind():
    result = CliRunner().invoke(app, ["components", "--kind", "encoderz"])
    assert result.exit_code != 0
    assert "Unknown component kind 'encoderz'" in str(result.exception)
