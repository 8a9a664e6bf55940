"""The `sphinx-data` command on bad input: one line naming the input and what was expected, exit
status 2, nothing written to --out; outputs that would destroy an input or an earlier output are
refused; outputs get the umask's permissions; the mix config is documented and validated."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from sphinx_mllm.data.cli import main
from tests.command_line import Outcome, run_main

IMAGE = {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}
ANNOTATION = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}


def sphinx_data(*args: object) -> Outcome:
    return run_main(main, *args)


def one_line_naming(outcome: Outcome, *names: object) -> str:
    assert outcome.status == 2, outcome
    assert len(outcome.error_lines) == 1, outcome.stderr
    (line,) = outcome.error_lines
    assert line.startswith("sphinx-data: ") and "Traceback" not in outcome.stderr
    for name in names:
        assert str(name) in line, (name, line)
    return line


def write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def instances(tmp_path, annotations=(ANNOTATION,), **extra) -> Path:
    content = {"images": [IMAGE], "annotations": list(annotations)} | extra
    return write(tmp_path / "instances.json", content)


def build(source: list, out: Path, *options: object) -> Outcome:
    return sphinx_data("build", *source, "--out", out, *options)


def test_coco_without_categories_names_the_file_and_the_record(tmp_path):
    path, out = instances(tmp_path), tmp_path / "out.jsonl"
    line = one_line_naming(build(["detection", "--source", "coco", path], out), path)
    assert "annotations[0]: category_id 1 is not in the file, which has no categories" in line
    assert not out.exists()


def test_bad_ids_and_nan_boxes_are_skipped_and_counted_under_skip(tmp_path):
    annotations = [
        ANNOTATION | {"id": None},
        ANNOTATION | {"id": 2, "bbox": [1, 2, float("nan"), 4]},
        ANNOTATION | {"id": "3"},
        ANNOTATION | {"id": 4},
    ]
    path = instances(tmp_path, annotations, categories=[{"id": 1, "name": "dog"}])
    out = tmp_path / "out.jsonl"
    outcome = build(["detection", "--source", "coco", path], out, "--on-error", "skip")
    assert outcome.status == 0, outcome
    assert "1 records written, 3 dropped" in outcome.stdout
    for reason in ("id is not an integer: None", "bbox is not a finite number: nan"):
        assert f"1 x source: {reason}" in outcome.stdout
    assert len(out.read_text().splitlines()) == 1


def test_deeply_nested_json_is_one_line(tmp_path):
    path = write(tmp_path / "deep.json", '{"annotations": [' + "[" * 100_000 + "]" * 100_000 + "]}")
    line = one_line_naming(
        build(["detection", "--source", "coco", path], tmp_path / "o.jsonl"), path
    )
    assert "a value nested deeper than Python's recursion limit at character 17" in line


def test_bad_records_of_each_format_are_one_line_naming_file_and_record(tmp_path):
    out = tmp_path / "out.jsonl"
    refs = tmp_path / "refs.p"
    ref = {"ref_id": 0, "ann_id": 1, "image_id": 1, "split": "train", "sentences": [{"raw": "x"}]}
    refs.write_bytes(pickle.dumps([ref], protocol=2))
    path = instances(tmp_path, categories=[{"id": 1, "name": "dog"}])
    line = one_line_naming(build(["rec", "--source", "refcoco-pickle", refs, path], out), refs)
    assert "ref[0]: sentences[0] has none of the keys ['sent']" in line
    questions = write(
        tmp_path / "q.json", {"questions": [{"question_id": 1, "image_id": 1, "question": "Q?"}]}
    )
    answers = write(tmp_path / "a.json", {"annotations": [{"question_id": 1, "answers": 5}]})
    line = one_line_naming(build(["vqa", "--source", "vqav2", questions, answers], out), answers)
    assert "annotations[0]: answers is not a list: 5" in line
    line = one_line_naming(
        build(["vqa", "--source", "vqav2", questions, answers], out, "--image-pattern", "{foo}"),
        "--image-pattern",
    )
    assert "'{foo}' cannot be filled" in line and "{image_id}" in line
    gqa = write(tmp_path / "gqa.json", [{"imageId": "n1", "question": "Q?", "answer": "no"}])
    line = one_line_naming(build(["vqa", "--source", "gqa", gqa], out), gqa)
    assert "expected a JSON object at the top level, found array" in line
    root = tmp_path / "flickr"
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    write(root / "Sentences" / "7.txt", "[/EN#1/animals A dog] runs .\n")
    write(
        root / "Annotations" / "7.xml",
        "<annotation><size><width>9</width><height>9</height></size><object><name>1</name>"
        "<bndbox><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax></bndbox></object></annotation>",
    )
    line = one_line_naming(build(["grounded_caption", "--source", "flickr30k", root], out), "7.xml")
    assert "object 0 has no <xmin>" in line
    assert not out.exists()


def test_an_output_that_is_an_input_or_exists_is_refused(tmp_path):
    path = instances(tmp_path, categories=[{"id": 1, "name": "dog"}])
    before = path.read_text()
    line = one_line_naming(build(["detection", "--source", "coco", path], path, "--force"), path)
    assert "also an input" in line and path.read_text() == before
    out = write(tmp_path / "out.jsonl", "earlier\n")
    line = one_line_naming(build(["detection", "--source", "coco", path], out), out)
    assert "--force" in line and out.read_text() == "earlier\n"
    assert build(["detection", "--source", "coco", path], out, "--force").status == 0
    assert json.loads(out.read_text())["id"] == "det-1-1"


def test_outputs_get_the_umask_permissions(tmp_path):
    path = instances(tmp_path, categories=[{"id": 1, "name": "dog"}])
    previous = os.umask(0o002)
    try:
        assert build(["detection", "--source", "coco", path], tmp_path / "o.jsonl").status == 0
        assert sphinx_data("synth", "--out", tmp_path / "s", "--train", 1, "--val", 1).status == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "o.jsonl").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o775
    assert (tmp_path / "s" / "tasks" / "train" / "vqa.jsonl").stat().st_mode & 0o777 == 0o664


def test_version_debug_and_a_help_that_documents_the_mix_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("sphinx-data ")
    with pytest.raises(SystemExit):
        main(["--help"])
    summary = " ".join(capsys.readouterr().out.split())
    assert "make the synthetic demo data, and mix task files." in summary
    with pytest.raises(SystemExit):
        main(["mix", "--help"])
    mix_help = capsys.readouterr().out
    for key in ("sources", "strategy", "total", "seed", "cap", "temperature", "proportional"):
        assert key in mix_help
    usage = sphinx_data("build", "detection", "--out", tmp_path / "o.jsonl")
    assert usage.status == 2 and len(usage.error_lines) == 1 and "--source" in usage.stderr
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError):
        main(["build", "detection", "--source", "coco", str(missing), "--out", "o", "--debug"])


def task_file(path: Path, count: int, task: str = "vqa") -> Path:
    records = [
        {"id": f"{task}-{i}", "conversations": [], "meta": {"task": task}} for i in range(count)
    ]
    return write(path, "".join(json.dumps(record) + "\n" for record in records))


A = [{"path": "a.jsonl"}]
BASE = {"sources": A, "total": 5}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "a mix config is a JSON object, not list"),
        (BASE | {"sede": 1}, "unknown keys ['sede']"),
        (BASE | {"sources": []}, "sources must be a non-empty list"),
        (BASE | {"sources": [{"path": "a.jsonl", "w": 1}]}, "sources[0] has unknown keys ['w']"),
        (BASE | {"sources": [A[0] | {"weight": -1}]}, "sources[0].weight must be >= 0"),
        (BASE | {"sources": [A[0] | {"weight": True}]}, "sources[0].weight is not a number"),
        (BASE | {"sources": [A[0] | {"weight": 0}]}, "every sources[].weight is 0"),
        (BASE | {"sources": [*A, {"path": "./a.jsonl"}]}, "sources[1].path is sources[0].path"),
        (BASE | {"sources": [{"path": 5}]}, "sources[0].path must be a file path"),
        (BASE | {"total": 0}, "total must be >= 1"),
        (BASE | {"total": "5"}, "total is not an integer: '5'"),
        (BASE | {"strategy": "even"}, "strategy must be one of"),
        (BASE | {"cap": 3}, "'cap' is for the capped strategy only"),
        (BASE | {"strategy": "capped"}, "cap is not an integer: None"),
        (BASE | {"strategy": "temperature", "temperature": 0}, "temperature must be > 0"),
        (BASE | {"strategy": "capped", "cap": 2, "sources": [A[0] | {"weight": 1}]},
         "sources[0].weight is for the fixed strategy only"),
        (BASE | {"sources": [{"path": "missing.jsonl"}]}, "missing.jsonl"),
        (BASE | {"sources": [{"path": "bad.jsonl"}]}, "bad.jsonl line 2: invalid JSON"),
    ],
)  # fmt: skip
def test_bad_mix_configs_name_the_key(tmp_path, config, message):
    task_file(tmp_path / "a.jsonl", 3)
    write(tmp_path / "bad.jsonl", '{"id": 1}\n{not json\n')
    path = write(tmp_path / "mix.json", config)
    out = tmp_path / "mixed.jsonl"
    line = one_line_naming(sphinx_data("mix", path, "--out", out), message)
    assert "mix.json" in line or ".jsonl" in line
    assert not out.exists()


def test_a_mix_config_with_nan_weight_is_refused(tmp_path):
    task_file(tmp_path / "a.jsonl", 3)
    path = write(
        tmp_path / "mix.json", '{"sources": [{"path": "a.jsonl", "weight": NaN}], "total": 2}'
    )
    line = one_line_naming(sphinx_data("mix", path, "--out", tmp_path / "o.jsonl"), path)
    assert "sources[0].weight is not a finite number: nan" in line


def test_mix_refuses_to_write_over_its_inputs(tmp_path):
    source = task_file(tmp_path / "a.jsonl", 3)
    path = write(tmp_path / "mix.json", {"sources": [{"path": "a.jsonl"}], "total": 4})
    before = source.read_text()
    line = one_line_naming(sphinx_data("mix", path, "--out", source, "--force"), source)
    assert "also an input" in line and source.read_text() == before
    assert sphinx_data("mix", path, "--out", tmp_path / "m.jsonl").status == 0
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 4
