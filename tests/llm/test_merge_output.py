"""Nothing lost: `--force` replaces only an earlier output of sphinx-merge that holds none of the
inputs, a run locks its output from start to end, and the command's own interface (one-line
errors with exit status 2, --help, --version, --debug)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sphinx_mllm.llm.merging import ConfigError, MergeRecipe, Model, run_merge
from sphinx_mllm.llm.merging.cli import main as merge_cli
from tests.llm.merge_helpers import llama_tensors, read_output, run_cli, write_model

MIX = "models: {a: ./a, b: ./b}\nmerge: 0.5 * a + 0.5 * b\n"


def files_under(directory):
    return sorted(
        (str(path.relative_to(directory)), path.read_bytes() if path.is_file() else None)
        for path in directory.rglob("*")
    )


@pytest.fixture
def project(tmp_path):
    """A project directory holding its merge config and both models."""
    project = tmp_path / "proj"
    write_model(project / "a", llama_tensors(1))
    write_model(project / "b", llama_tensors(2))
    (project / "merge.yml").write_text(MIX)
    return project


def test_force_never_replaces_the_directory_that_holds_the_inputs(project):
    before = files_under(project)
    code, errors = run_cli(project / "merge.yml", project, "--force", "--no-progress")
    assert code == 2 and len(errors) == 1
    assert str(project) in errors[0] and "not an earlier output of sphinx-merge" in errors[0]
    assert files_under(project) == before


def test_force_never_replaces_other_content(project, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "results.txt").write_text("three weeks of evaluations")
    code, errors = run_cli(project / "merge.yml", notes, "--force", "--no-progress")
    assert code == 2 and len(errors) == 1 and str(notes) in errors[0]
    assert (notes / "results.txt").read_text() == "three weeks of evaluations"


def test_force_replaces_an_earlier_output_unless_it_holds_an_input(project, tmp_path):
    out = tmp_path / "out"
    assert run_cli(project / "merge.yml", out, "--no-progress")[0] == 0
    code, errors = run_cli(project / "merge.yml", out, "--no-progress")
    assert code == 2 and "pass --force" in errors[0]
    (project / "other.yml").write_text("models: {a: ./a, b: ./b}\nmerge: 0.25 * a + 0.75 * b\n")
    assert run_cli(project / "other.yml", out, "--force", "--no-progress")[0] == 0
    name = "model.norm.weight"
    expected = llama_tensors(1)[name].float() * 0.25 + llama_tensors(2)[name].float() * 0.75
    assert torch.equal(read_output(out)[name], expected.to(torch.bfloat16))

    # the earlier output is now an input (a model, or the directory of the config file)
    (tmp_path / "again.yml").write_text(f"models: {{prev: {out}, b: {project / 'b'}}}\nmerge: prev")
    (out / "inside.yml").write_text(MIX.replace("./", f"{project}/"))
    before = files_under(out)
    for config in (tmp_path / "again.yml", out / "inside.yml"):
        code, errors = run_cli(config, out, "--force", "--no-progress")
        assert code == 2 and len(errors) == 1
        assert f"{out} holds" in errors[0] and "an input of this run" in errors[0]
    assert files_under(out) == before


def test_an_existing_file_is_not_an_output_directory(project, tmp_path):
    (tmp_path / "out").write_text("keep me")
    code, errors = run_cli(project / "merge.yml", tmp_path / "out", "--force", "--no-progress")
    assert code == 2 and errors == [
        f"sphinx-merge: {tmp_path / 'out'} exists and is not a directory; choose another output"
    ]
    assert (tmp_path / "out").read_text() == "keep me"


def test_a_second_run_into_the_same_output_fails_while_the_first_holds_the_lock(project, tmp_path):
    out = tmp_path / "out"
    a, b = Model(project / "a", "a"), Model(project / "b", "b")
    writing, release = threading.Event(), threading.Event()

    def pause_after_the_first_tensor(count):
        writing.set()
        assert release.wait(60)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            run_merge, MergeRecipe(0.5 * a + 0.5 * b), out, progress=pause_after_the_first_tensor
        )
        assert writing.wait(60)
        try:
            for extra in ([], ["--force"]):
                code, errors = run_cli(project / "merge.yml", out, "--no-progress", *extra)
                assert code == 2 and len(errors) == 1
                assert str(out) in errors[0] and "being written by another run" in errors[0]
        finally:
            release.set()
        assert first.result(timeout=60).output == out
    assert len(read_output(out)) == len(llama_tensors(1))
    assert run_cli(project / "merge.yml", out, "--force", "--no-progress")[0] == 0


def test_help_is_whole_and_lists_the_common_options(capsys):
    assert merge_cli(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "merge checkpoints as a config file describes (our YAML or a mergekit YAML)" in text
    assert "--force replace OUT if it is an earlier output of sphinx-merge" in text
    assert "--debug" in text and "--version" in text and "Exit status: 0 on success" in text
    assert merge_cli(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sphinx-llm ")


def test_usage_errors_are_one_line_with_status_2(capsys, project, tmp_path):
    for arguments in (["--shard-size", "0"], ["--shard-size", "lots"], ["--threads", "0"]):
        assert merge_cli([str(project / "merge.yml"), str(tmp_path / "out"), *arguments]) == 2
        errors = capsys.readouterr().err.splitlines()
        assert len(errors) == 1 and errors[0].startswith("sphinx-merge: argument ")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_instead(project, tmp_path):
    (project / "bad.yml").write_text(MIX + "colour: blue\n")
    with pytest.raises(ConfigError, match="Unknown keys"):
        merge_cli([str(project / "bad.yml"), str(tmp_path / "out"), "--debug"])
