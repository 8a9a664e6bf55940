"""Multi-image LLaVA records, the byte spans a lazy reader reads records back by, and the plain
image-name check that must agree with the full one."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sphinx_mllm.data.image_paths import ImagePathError, check_image_name
from sphinx_mllm.data.readers import AnnotationFormatError, Problems, read_llava
from sphinx_mllm.data.readers.checks import RecordProblem, image_name
from sphinx_mllm.data.readers.spans import record_spans


def _record(image, *questions):
    turns = []
    for question in questions or ("<image>\nHi",):
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": "Hello"}]
    return {"id": "m", "image": image, "conversations": turns}


def test_a_list_of_images_with_one_placeholder_each_is_read(tmp_path):
    records = [
        _record(["a.jpg", "b.jpg"], "<image>\nand <image>\nDiffer?"),
        _record(["a.jpg", "b.jpg"], "<image>\nFirst.", "<image>\nAnd this one?"),
        _record(["a.jpg"], "<image>\nOne in a list."),
        _record("a.jpg", "A single image may leave its placeholder to the template."),
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    assert list(read_llava(path)) == records


@pytest.mark.parametrize(
    ("image", "questions", "message"),
    [
        (["a.jpg", "b.jpg"], ("<image>\nOnly one?",), r"holds 1 <image> placeholder\(s\) for 2"),
        (["a.jpg", "b.jpg"], ("No placeholder",), r"holds 0 <image> .* for 2 image"),
        ("a.jpg", ("<image><image> twice",), r"holds 2 <image> placeholder\(s\) for 1"),
        ([], ("<image>",), "not a path or a non-empty list of paths"),
        (["a.jpg", 5], ("<image><image>",), "not a path or a non-empty list"),
        (["a.jpg", "../b.jpg"], ("<image><image>",), r"'\.\./b\.jpg' leaves the image root"),
    ],
)
def test_a_bad_image_list_is_named_with_its_record(tmp_path, image, questions, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_record(image, *questions)) + "\n")
    with pytest.raises(AnnotationFormatError, match=rf"d\.jsonl record m: .*{message}"):
        list(read_llava(path))
    problems = Problems("skip")
    assert list(read_llava(path, problems)) == [] and problems.total == 1


def test_spans_give_back_each_record_and_its_line(tmp_path):
    records = [{"id": i, "text": "ünï€😀" * i, "image": ["a.jpg"] * i} for i in range(40)]
    array = tmp_path / "d.json"
    body = ",\r\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in records)
    array.write_bytes(("[\r\n" + body + "\r\n]\n").encode())
    lines = tmp_path / "d.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[:3])
    lines.write_text(text + "\n{not json\n" + json.dumps(records[3]) + "\n")
    for path, count in ((array, 40), (lines, 5)):
        data = path.read_bytes()
        spans = list(record_spans(path))
        assert len(spans) == count
        for span in spans:
            assert data[: span.start].count(b"\n") + 1 == span.line
            if span.error is None:
                assert json.loads(data[span.start : span.end]) == span.value
    assert [span.value["id"] for span in record_spans(array)] == list(range(40))
    bad = list(record_spans(lines))[3]
    assert (bad.line, bad.value) == (5, None) and bad.error.startswith("invalid JSON")


def test_a_broken_array_is_named_by_character_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"id": 1},\n{"id": 2}\n{"id": 3}]')
    with pytest.raises(AnnotationFormatError, match=r"d\.json: expected ',' or '\]'.*\(line 4\)"):
        list(record_spans(path))
    path.write_text('{"records": []}')
    with pytest.raises(AnnotationFormatError, match="expected a JSON array at the top level"):
        list(record_spans(path))


NAME_PIECES = st.sampled_from(["a", "b.jpg", "/", "\\", "..", ".", ":", "C:", " ", "\0", "~", "é"])


@given(st.lists(NAME_PIECES, max_size=6).map("".join), st.booleans())
def test_the_plain_name_check_agrees_with_the_full_one(name, allow_outside):
    try:
        expected = check_image_name(name, allow_outside=allow_outside)
    except ImagePathError:
        expected = None
    try:
        found = image_name(name, allow_outside)
    except RecordProblem:
        found = None
    assert found == expected
