"""Generated bad input for `sphinx-data`: annotation files of each format with a field of the
wrong type or value, a required key missing, an id given twice, a file cut short or of the wrong
shape, and bad mix configs. Whatever the defect, the command ends with exit status 2 and exactly
one line on stderr that names the defective file, and writes nothing to --out."""

from __future__ import annotations

import copy
import json
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_mllm.data.cli import main
from tests.command_line import run_main

NOT_AN_ID = [None, True, "1", 1.5, [], {"id": 1}]
NOT_A_NAME = [None, 5, "", [], "../x.jpg", "/abs/x.jpg"]
NOT_A_SIDE = [None, True, 0, -5, 99.5, 10**30, float("nan"), float("inf"), "640", []]
NOT_A_BOX = [
    None, "1,2,3,4", [1, 2, 3], [1, 2, 3, 4, 5], [True, 1, 2, 3], [1, 2, "3", 4], [1, 2, 0, 3],
    [1, 2, -3, 4], [90, 10, 50, 20], [1, 2, float("nan"), 4], [1, 2, float("inf"), 4],
    [[[[1]]], 2, 3, 4],
]  # fmt: skip
NOT_A_TEXT = [None, 5, True, [], {"a": 1}]
OPTIONAL = {"iscrowd", "multiple_choice_answer", "file_name"}  # keys a record may leave out


@dataclass
class Case:
    files: dict[str, str | bytes]  # name -> content
    args: list[str]  # "@name" stands for the path of the file (or folder) `name`
    named: str  # the file the error must name


def run(case: Case) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for name, content in case.files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        out = root / "out" / "result.jsonl"
        args = [root / arg[1:] if arg.startswith("@") else arg for arg in case.args]
        outcome = run_main(main, *args, "--out", out)
        assert outcome.status == 2, (case, outcome)
        assert len(outcome.error_lines) == 1, (case, outcome.stderr)
        (line,) = outcome.error_lines
        assert line.startswith("sphinx-data: ") and "Traceback" not in outcome.stderr, line
        assert str(root / case.named) in line, (case, line)
        assert not out.exists() and not list(out.parent.glob("*")), case


def dumps(content) -> str:
    return json.dumps(content)  # NaN and Infinity as Python writes them


@st.composite
def defect(draw, content: dict, fields: dict[str, dict[str, list]]) -> dict:
    """`content` with one record's field set to a bad value, or a required key deleted."""
    content = copy.deepcopy(content)
    section = draw(st.sampled_from(sorted(fields)))
    records = content[section]
    record = records[draw(st.integers(0, len(records) - 1))]
    field = draw(st.sampled_from(sorted(fields[section])))
    if field not in OPTIONAL and draw(st.booleans()):
        del record[field]
    else:
        record[field] = draw(st.sampled_from(fields[section][field]))
    return content


def cut_or_reshaped(draw, text: str, sections: list[str], content: dict) -> str:
    """The text cut short (inside its first 90%), or a section that is not an array."""
    if draw(st.booleans()):
        return text[: draw(st.integers(1, int(len(text) * 0.9)))]
    reshaped = dict(content)
    reshaped[draw(st.sampled_from(sections))] = draw(st.sampled_from([None, 5, "x", {"a": 1}]))
    return dumps(reshaped)


COCO = {
    "info": {"year": 2014},
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "b.jpg", "width": 64, "height": 64},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [1, 1, 30, 30]},
    ],
    "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
}
COCO_FIELDS = {
    "images": {"id": NOT_AN_ID, "file_name": NOT_A_NAME, "width": NOT_A_SIDE, "height": NOT_A_SIDE},
    "annotations": {
        "id": NOT_AN_ID, "image_id": [*NOT_AN_ID, 99], "category_id": [*NOT_AN_ID, 99],
        "bbox": NOT_A_BOX, "iscrowd": [2, "0", None, 0.5],
    },
    "categories": {"id": NOT_AN_ID, "name": NOT_A_TEXT},
}  # fmt: skip


@st.composite
def coco_cases(draw) -> Case:
    kind = draw(st.sampled_from(["field", "twice", "file"]))
    if kind == "field":
        text = dumps(draw(defect(COCO, COCO_FIELDS)))
    elif kind == "twice":
        content = copy.deepcopy(COCO)
        section = draw(st.sampled_from(["images", "annotations", "categories"]))
        content[section][1]["id"] = content[section][0]["id"]
        text = dumps(content)
    else:
        text = cut_or_reshaped(draw, dumps(COCO), ["images", "annotations", "categories"], COCO)
    task, source = draw(st.sampled_from([("detection", "coco"), ("layout", "publaynet")]))
    if source == "publaynet":
        text = text.replace('"dog"', '"text"').replace('"cat"', '"table"')
    options = ["--on-error", "skip"] if kind == "file" and draw(st.booleans()) else []
    args = ["build", task, "--source", source, "@instances.json", *options]
    return Case({"instances.json": text}, args, "instances.json")


QUESTIONS = {"questions": [{"question_id": 1, "image_id": 9, "question": "What colour?"}]}
ANSWERS = {
    "annotations": [
        {"question_id": 1, "multiple_choice_answer": "red", "answers": [{"answer": "red"}] * 3}
    ]
}
ANSWER_FIELDS = {
    "annotations": {
        "question_id": [None, True, 1.5, [], {}],
        "answers": [None, 5, "red", [5], [{"answer": None}], [{"a": "red"}]],
        "multiple_choice_answer": [5, True, [], {}],
    }
}
QUESTION_FIELDS = {
    "questions": {
        "question_id": [None, True, 1.5, [], 2],
        "image_id": [None, "9", 1.5, True, []],
        "question": NOT_A_TEXT,
    }
}


@st.composite
def vqa_cases(draw) -> Case:
    questions, answers, named = dumps(QUESTIONS), dumps(ANSWERS), "q.json"
    kind = draw(st.sampled_from(["questions", "answers", "file"]))
    if kind == "questions":
        questions = dumps(draw(defect(QUESTIONS, QUESTION_FIELDS)))
    elif kind == "answers":
        answers, named = dumps(draw(defect(ANSWERS, ANSWER_FIELDS))), "a.json"
    elif draw(st.booleans()):
        questions = cut_or_reshaped(draw, questions, ["questions"], QUESTIONS)
    else:
        answers, named = cut_or_reshaped(draw, answers, ["annotations"], ANSWERS), "a.json"
    args = ["build", "vqa", "--source", "vqav2", "@q.json", "@a.json"]
    return Case({"q.json": questions, "a.json": answers}, args, named)


GQA = {"201": {"imageId": "n1", "question": "Is it red?", "answer": "no", "fullAnswer": "No."}}
GQA_FIELDS = {"imageId": [None, True, [], "../x"], "question": NOT_A_TEXT, "answer": NOT_A_TEXT}


@st.composite
def gqa_cases(draw) -> Case:
    if draw(st.booleans()):
        record = dict(GQA["201"])
        field = draw(st.sampled_from(sorted(GQA_FIELDS)))
        record[field] = draw(st.sampled_from(GQA_FIELDS[field]))
        text = dumps({"201": record})
    else:
        text = draw(st.sampled_from([dumps([GQA["201"]]), dumps(GQA)[:-1], '{"201": 5}', "5"]))
    return Case({"gqa.json": text}, ["build", "vqa", "--source", "gqa", "@gqa.json"], "gqa.json")


REF = {"ref_id": 0, "ann_id": 1, "image_id": 1, "split": "train", "sentences": [{"sent": "a dog"}]}
REF_FIELDS = {
    "ref_id": NOT_AN_ID, "ann_id": [*NOT_AN_ID, 99], "image_id": [*NOT_AN_ID, 2],
    "split": NOT_A_TEXT, "file_name": [5, "../x.jpg", "/abs/x.jpg"],
    "sentences": ["a dog", None, 5, [5], [{"raw": "a dog"}], [{"sent": None}]],
}  # fmt: skip


@st.composite
def refcoco_cases(draw) -> Case:
    ref = dict(REF)
    if draw(st.booleans()):
        field = draw(st.sampled_from(sorted(REF_FIELDS)))
        ref[field] = draw(st.sampled_from(REF_FIELDS[field]))
        refs = pickle.dumps([ref], protocol=2)
    else:
        whole = pickle.dumps([ref], protocol=2)
        refs = draw(st.sampled_from([whole[: len(whole) // 2], b"not a pickle", pickle.dumps(ref)]))
    args = ["build", "rec", "--source", "refcoco-pickle", "@refs.p", "@instances.json"]
    return Case({"refs.p": refs, "instances.json": dumps(COCO)}, args, "refs.p")


LLAVA = {
    "id": "r1",
    "image": "a.jpg",
    "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}],
}


@st.composite
def llava_cases(draw) -> Case:
    record = copy.deepcopy(LLAVA)
    field = draw(st.sampled_from(["image", "conversations", "from", "value"]))
    if field == "image":
        record["image"] = draw(st.sampled_from([5, None, [], "../a.jpg", "/a.jpg", ""]))
    elif field == "conversations":
        record["conversations"] = draw(st.sampled_from([None, [], "hi", [5], {"from": "human"}]))
    else:
        turn = record["conversations"][draw(st.integers(0, 1))]
        pool = ["robot", 5, None, []] if field == "from" else [None, 5, [], {"a": 1}]
        turn[field] = draw(st.sampled_from(pool))
    name = draw(st.sampled_from(["d.json", "d.jsonl"]))
    text = dumps([record]) if name == "d.json" else dumps(record) + "\n"
    if draw(st.booleans()):
        text = draw(st.sampled_from([text[: len(text) // 2], dumps({"records": [LLAVA]})]))
    args = ["build", "conversation", "--source", "llava", f"@{name}"]
    return Case({name: text}, args, name)


BNDBOX = {"xmin": "11", "ymin": "21", "xmax": "50", "ymax": "40"}


@st.composite
def flickr_cases(draw) -> Case:
    corners, size = dict(BNDBOX), {"width": "100", "height": "50"}
    kind = draw(st.sampled_from(["corner", "size", "xml"]))
    if kind == "corner":
        corner = draw(st.sampled_from(sorted(corners)))
        value = draw(st.sampled_from([None, "", "abc", "nan", "inf", "1e400", "-30", "999"]))
        corners[corner] = value
    elif kind == "size":
        side = draw(st.sampled_from(sorted(size)))
        size[side] = draw(st.sampled_from([None, "0", "abc", "1e30", "-4", "nan"]))
    box = "".join(f"<{k}>{v}</{k}>" for k, v in corners.items() if v is not None)
    dims = "".join(f"<{k}>{v}</{k}>" for k, v in size.items() if v is not None)
    xml = (
        f"<annotation><size>{dims}</size>"
        f"<object><name>1</name><bndbox>{box}</bndbox></object></annotation>"
    )
    if kind == "xml":
        xml = draw(st.sampled_from([xml[: len(xml) // 2], "<annotation/>", "not xml"]))
    files = {"f/Sentences/7.txt": "[/EN#1/animals A dog] runs .\n", "f/Annotations/7.xml": xml}
    args = ["build", "grounded_caption", "--source", "flickr30k", "@f"]
    return Case(files, args, "f/Annotations/7.xml")


MIX = {"sources": [{"path": "a.jsonl", "weight": 2}, {"path": "b.jsonl"}], "total": 5, "seed": 1}
MIX_VALUES = {
    "total": [0, -1, 1.5, "5", None, True, []],
    "seed": [1.5, "1", None, []],
    "strategy": ["even", 5, None],
    "cap": [3],
    "temperature": [2.0],
    "sources": [
        [], None, "a.jsonl", [5], [{"weight": 1}], [{"path": 5}], [{"path": "a.jsonl", "w": 1}],
    ],
    "weight": [-1, float("nan"), float("inf"), "2", True, None, []],
    "extra": [1],
}  # fmt: skip


@st.composite
def mix_cases(draw) -> Case:
    config = copy.deepcopy(MIX)
    key = draw(st.sampled_from(sorted(MIX_VALUES)))
    value = draw(st.sampled_from(MIX_VALUES[key]))
    if key == "weight":
        config["sources"][draw(st.integers(0, 1))]["weight"] = value
    else:
        config[key] = value
    files = {
        "mix.json": dumps(config),
        "a.jsonl": '{"id": "a1", "meta": {"task": "vqa"}}\n',
        "b.jsonl": '{"id": "b1", "meta": {"task": "rec"}}\n',
    }
    named = "mix.json"
    if draw(st.integers(0, 5)) == 0:  # a task file, not the config, is bad
        config, named = copy.deepcopy(MIX), draw(st.sampled_from(["a.jsonl", "b.jsonl"]))
        files["mix.json"] = dumps(config)
        files[named] = draw(st.sampled_from(["", "\n\n", "{not json\n", "[1, 2]\n", '"x"\n']))
    return Case(files, ["mix", "@mix.json"], named)


EXAMPLES = settings(max_examples=40, deadline=None)


CASES = {
    "coco": coco_cases,
    "vqa": vqa_cases,
    "gqa": gqa_cases,
    "refcoco pickles": refcoco_cases,
    "llava": llava_cases,
    "flickr30k": flickr_cases,
    "mix configs": mix_cases,
}


@pytest.mark.parametrize("kind", sorted(CASES))
@EXAMPLES
@given(data=st.data())
def test_bad_files(kind, data):
    run(data.draw(CASES[kind](), label="case"))
