"""REC records byte for byte: a RefCOCO export read, built and serialised gives exactly the
records below (pinned before the builder, the reader and validation were made faster), and the
cached SPHINX-style coordinate check agrees with the plain scan on any text."""

from __future__ import annotations

import json
import random
import re

import pytest

from sphinx_mllm.data import get_task_builder
from sphinx_mllm.data.readers import AnnotationFormatError, read_refs_export
from sphinx_mllm.data.readers.problems import Problems
from sphinx_mllm.data.tasks.geometry import coordinates_out_of_range

ROWS = [
    {
        "ref_id": 7,
        "image_id": 42,
        "split": "train",
        "sentences": [
            "the man on the right.",
            {"sent": "ünïcode dog"},
            {"raw": " 東京 tree "},
            " . ",
        ],
        "bbox": [468.3, 0.91, 171.7, 116.12],
        "width": 640,
        "height": 428,
    },
    {
        "image_id": 9,
        "split": "val",
        "sentences": ["left cat"],
        "bbox": [0, 10.5, 300, 200],
        "file_name": "x.jpg",
        "category_id": 3,
    },
]
PROMPT = (
    '"<image>\\nPlease provide the bounding box coordinate of the region this sentence describes: '
)
META = '"meta": {"task": "rec", "source": "", "image_size": [640, 428], '
META += '"bbox_xyxy": [468.3, 0.91, 640.0, 117.03], "split": "train"}}'
IMAGE = '"image": "COCO_train2014_000000000042.jpg"'
EXPECTED = [
    '{"id": "rec-7-0", ' + IMAGE + ', "conversations": [{"from": "human", "value": ' + PROMPT
    + 'the man on the right."}, {"from": "gpt", "value": "[0.73,0.17,1.00,0.35]"}], ' + META,
    '{"id": "rec-7-1", ' + IMAGE + ', "conversations": [{"from": "human", "value": ' + PROMPT
    + '\\u00fcn\\u00efcode dog."}, {"from": "gpt", "value": "[0.73,0.17,1.00,0.35]"}], ' + META,
    '{"id": "rec-7-2", ' + IMAGE + ', "conversations": [{"from": "human", "value": ' + PROMPT
    + '\\u6771\\u4eac tree."}, {"from": "gpt", "value": "[0.73,0.17,1.00,0.35]"}], ' + META,
    '{"id": "rec-1-0", "image": "x.jpg", "conversations": [{"from": "human", "value": ' + PROMPT
    + 'left cat."}, {"from": "gpt", "value": "[0.00,0.14,0.60,0.55]"}], "meta": {"task": "rec", '
    '"source": "", "image_size": [500, 375], "bbox_xyxy": [0.0, 10.5, 300.0, 210.5], '
    '"split": "val"}}',
]  # fmt: skip


def test_rec_records_are_byte_identical(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(ROWS))
    builder = get_task_builder("rec")()
    refs = read_refs_export(path, image_sizes={9: (500, 375)})
    assert [json.dumps(sample.to_record()) for sample in builder.build(refs)] == EXPECTED
    assert dict(builder.stats.dropped) == {"empty expression": 1}


def test_bad_export_rows_are_named(tmp_path):
    rows = [
        [1, 2],
        {"image_id": 1, "split": "x", "sentences": ["a"]},
        {"image_id": 2, "split": "x", "sentences": ["a"], "bbox": [1, 2, 3, 4]},
        {"image_id": 3, "split": "x", "sentences": ["a"], "bbox": [1, 2, 3], "width": 4,
         "height": 4},
    ]  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    problems = Problems("skip")
    assert list(read_refs_export(path, problems=problems)) == []
    assert problems.skipped == {
        "not an object but list": 1,
        "missing keys ['bbox']": 1,
        "no width/height and no image size for image 2": 1,
        "bbox is not 4 numbers: [1, 2, 3]": 1,
    }
    with pytest.raises(AnnotationFormatError, match=r"bad\.json row 0: not an object"):
        list(read_refs_export(path))


_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _scan(text: str) -> bool:
    """The check as first written: every number of every innermost bracket in [0, 1]."""
    return any(
        not 0.0 <= float(number) <= 1.0
        for inside in _BRACKETS.findall(text)
        for number in _NUMBER.findall(inside)
    )


def test_cached_coordinate_check_agrees_with_the_plain_scan():
    rng = random.Random(0)
    parts = ["[", "]", "0.5", "1.5", "-0.2", "-0", "1", "0", "1.00", "1.01", ",", ";", "x", "."]
    texts = ["".join(rng.choices(parts, k=rng.randint(0, 9))) for _ in range(3000)]
    for text in texts + texts:  # the second pass is answered from the cache
        assert coordinates_out_of_range(text) == _scan(text), text
