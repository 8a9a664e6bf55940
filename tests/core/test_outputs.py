"""Writing outputs without losing anything: the lock, what --force may replace, permissions."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from sphinx_mllm.core.outputs import (
    MARKER_FILE,
    AtomicOutputDirectory,
    OutputError,
    OutputExistsError,
    atomic_file,
)


def _write(target, writer="tool", **options):
    with AtomicOutputDirectory(target, writer=writer, **options) as output:
        (output.path / "result.txt").write_text("new")
    return target


def test_a_finished_output_holds_its_files_and_marker_and_nothing_is_left_beside_it(tmp_path):
    _write(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER_FILE, "result.txt"]
    assert json.loads((tmp_path / "out" / MARKER_FILE).read_text()) == {"writer": "tool"}


def test_an_error_leaves_nothing(tmp_path):
    with pytest.raises(KeyError), AtomicOutputDirectory(tmp_path / "out", writer="tool") as output:
        (output.path / "half.txt").write_text("half")
        raise KeyError("crash")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_needs_force(tmp_path):
    _write(tmp_path / "out")
    with pytest.raises(OutputExistsError, match="pass --force"):
        _write(tmp_path / "out")
    (tmp_path / "out" / "result.txt").write_text("old")
    _write(tmp_path / "out", force=True)
    assert (tmp_path / "out" / "result.txt").read_text() == "new"


def test_force_never_replaces_foreign_files_another_writers_output_or_an_input(tmp_path):
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an earlier output of tool"):
        _write(foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "mine"

    other = _write(tmp_path / "other", writer="another-tool")
    with pytest.raises(OutputError, match="not an earlier output of tool"):
        _write(other, force=True)

    ours = _write(tmp_path / "ours")
    (ours / "input.yaml").write_text("an input")
    for given in (ours / "input.yaml", ours):
        with pytest.raises(OutputError, match="an input of this run"):
            _write(ours, force=True, inputs=[given])
    assert (ours / "input.yaml").read_text() == "an input"
    assert list(tmp_path.glob(".*")) == []


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    for force in (False, True):
        with pytest.raises(OutputError, match="not a directory"):
            _write(tmp_path / "out", force=force)
    assert (tmp_path / "out").read_text() == "a file"


def test_a_second_writer_is_locked_out_for_the_whole_run(tmp_path):
    first = AtomicOutputDirectory(tmp_path / "out", writer="tool")
    with pytest.raises(OutputError, match=rf"being written by another run \(process {os.getpid()}"):
        AtomicOutputDirectory(tmp_path / "out", writer="tool", force=True)
    (first.path / "result.txt").write_text("first")
    first.commit()
    assert (tmp_path / "out" / "result.txt").read_text() == "first"
    _write(tmp_path / "out", force=True)  # free again once the first run ended


def test_the_lock_holds_across_processes(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from sphinx_mllm.core.outputs import AtomicOutputDirectory
        output = AtomicOutputDirectory({str(tmp_path / "out")!r}, writer="tool")
        print("locked", flush=True)
        sys.stdin.readline()
        output.commit()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"process {child.pid}"):
            AtomicOutputDirectory(tmp_path / "out", writer="tool", force=True)
    finally:
        child.communicate("go\n", timeout=60)
    assert child.returncode == 0
    assert (tmp_path / "out" / MARKER_FILE).is_file()


def test_abandoned_partials_of_the_same_writer_are_removed_and_others_kept(tmp_path):
    dead = tmp_path / ".out.partial-999999999-abcd"
    dead.mkdir()
    (dead / MARKER_FILE).write_text(json.dumps({"writer": "tool"}))
    foreign = tmp_path / ".out.partial-999999998-abcd"
    foreign.mkdir()
    (foreign / "data").write_text("not ours")
    _write(tmp_path / "out")
    assert not dead.exists() and (foreign / "data").read_text() == "not ours"


@pytest.mark.parametrize(
    ("umask", "directory", "file"), [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)]
)
def test_outputs_take_the_permissions_of_the_umask(tmp_path, umask, directory, file):
    previous = os.umask(umask)
    try:
        target = _write(tmp_path / "out")
        with atomic_file(tmp_path / "records.jsonl") as out:
            out.write("{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == directory
    assert stat.S_IMODE((target / "result.txt").stat().st_mode) == file
    assert stat.S_IMODE((tmp_path / "records.jsonl").stat().st_mode) == file


def test_atomic_file_replaces_only_when_complete(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_file(path) as out:
        out.write("half")
        raise RuntimeError
    assert path.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [path]
    with atomic_file(path) as out:
        out.write("new\n")
    assert path.read_text() == "new\n" and sorted(tmp_path.iterdir()) == [path]
