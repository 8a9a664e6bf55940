"""Task builders: SPHINX's instructions and box text, validation of every record, caps and
counts, deterministic paraphrases; and the `sphinx-data` command end to end."""

import json
from collections import Counter

import pytest

from sphinx_mllm.data import get_task_builder, list_task_builders
from sphinx_mllm.data.cli import main as sphinx_data
from sphinx_mllm.data.readers import AnnotationFormatError, CocoFile
from sphinx_mllm.data.readers.refcoco import ReferringExpression
from sphinx_mllm.data.readers.vqa import VqaQuestion
from sphinx_mllm.data.tasks import Sample, validate

REF = ReferringExpression(
    1, 9, "a.jpg", (640, 428), "val", (468.3, 0.91, 171.7, 116.12), ("the man on the right.",)
)


def build(task, source, **options):
    builder = get_task_builder(task)(**options)
    return builder, list(builder.build(source))


def test_every_task_of_the_issue_is_registered():
    assert set(list_task_builders()) >= {
        "vqa", "multiple_choice", "rec", "reg", "grounded_caption", "detection", "layout", "pose",
        "short_caption", "detailed_caption", "conversation",
    }  # fmt: skip


def test_rec_uses_sphinx_instruction_and_the_padded_frame():
    _, (sample,) = build("rec", [REF])
    human, answer = (turn["value"] for turn in sample.conversations)
    assert human == (
        "<image>\nPlease provide the bounding box coordinate of the region this sentence "
        "describes: the man on the right."
    )
    assert answer == "[0.73,0.17,1.00,0.35]"  # the recipe's worked example
    assert sample.meta["task"] == "rec" and sample.meta["image_size"] == [640, 428]
    _, (per_axis,) = build("rec", [REF], frame="per_axis")
    assert per_axis.conversations[1]["value"] == "[0.73,0.00,1.00,0.27]"


def test_reg_and_other_styles():
    _, (sample,) = build("reg", [REF], style="shikra")
    assert sample.conversations[0]["value"].endswith("region: [0.732,0.167,1.000,0.348].")
    assert sample.conversations[1]["value"] == "the man on the right."


def test_vqa_and_multiple_choice_instructions():
    question = VqaQuestion("7", "b.jpg", "What colour is it?", "red", ("red",) * 10)
    _, (vqa,) = build("vqa", [question])
    assert (
        vqa.conversations[0]["value"]
        == "<image>\nWhat colour is it?\nAnswer the question using a single word or phrase."
    )
    _, (hint,) = build("vqa", [question], unanswerable_hint=True)
    assert "respond with 'Unanswerable'" in hint.conversations[0]["value"]
    choice = VqaQuestion("8", "b.jpg", "Why?", "c", choices=("a", "b", "c"), correct_choice=2)
    _, (mc,) = build("multiple_choice", [choice])
    assert mc.conversations[0]["value"].endswith(
        "Why?\nA. a\nB. b\nC. c\nAnswer with the option's letter from the given choices directly."
    )
    assert mc.conversations[1]["value"] == "C"


def coco_file(
    tmp_path, annotations, categories=({"id": 1, "name": "dog"}, {"id": 2, "name": "cat"})
):
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 50}],
                "annotations": annotations,
                "categories": list(categories),
            }
        )
    )
    return CocoFile(path)


def test_detection_groups_by_category_and_caps_boxes(tmp_path):
    boxes = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [i, 0, 10, 10]} for i in range(5)]
    boxes.append({"id": 9, "image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 50], "iscrowd": 1})
    builder, samples = build("detection", [coco_file(tmp_path, boxes)], max_boxes=3)
    (sample,) = samples
    assert sample.conversations[0]["value"] == "<image>\nDetect all dog shown in the image."
    assert (
        sample.conversations[1]["value"]
        == "<p>dog</p> [0.00,0.25,0.10,0.35;0.01,0.25,0.11,0.35;0.02,0.25,0.12,0.35]"
    )
    assert builder.stats.boxes_dropped == 2 and builder.stats.dropped["crowd annotation"] == 1


def test_pose_writes_labelled_keypoints_only(tmp_path):
    keypoints = [0.0] * 51
    keypoints[0:3] = [50, 25, 2]  # nose
    keypoints[15:18] = [40, 30, 1]  # left shoulder (occluded but labelled)
    person = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 10, 40, 40], "keypoints": keypoints}
    ]
    _, (sample,) = build("pose", [coco_file(tmp_path, person, ({"id": 1, "name": "person"},))])
    assert sample.conversations[0]["value"].endswith("in the region [0.30,0.35,0.70,0.75].")
    assert (
        sample.conversations[1]["value"]
        == "<p>nose</p> [0.50,0.50] <p>left shoulder</p> [0.40,0.55]"
    )


def test_paraphrase_pools_are_deterministic_per_sample():
    pool = ["Where is {expression}?", "Find {expression}.", "Locate {expression}, please."]
    refs = [
        ReferringExpression(i, 9, "a.jpg", (640, 428), "val", (1, 1, 5, 5), (f"thing {i}",))
        for i in range(30)
    ]
    _, first = build("rec", refs, instructions=pool, seed=3)
    _, again = build("rec", list(reversed(refs)), instructions=pool, seed=3)
    by_id = {s.id: s.conversations[0]["value"] for s in again}
    assert all(by_id[s.id] == s.conversations[0]["value"] for s in first)
    assert len({s.conversations[0]["value"].split(" ")[0] for s in first}) == 3


@pytest.mark.parametrize(
    ("conversations", "image", "reason"),
    [
        ([{"from": "human", "value": "<image>\nHi"}], "a.jpg", "no assistant turn"),
        (
            [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}],
            "a.jpg",
            "not exactly once",
        ),
        (
            [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "<image>"}],
            "a.jpg",
            "not exactly once",
        ),
        (
            [
                {"from": "human", "value": "<image>\nWhere?"},
                {"from": "gpt", "value": "[0.10,0.20,1.30,0.40]"},
            ],
            "a.jpg",
            "outside \\[0, 1\\]",
        ),
        (
            [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}],
            None,
            "without an image",
        ),
        (
            [{"from": "human", "value": "<image>\nand?"}, {"from": "gpt", "value": "x"}],
            ["a.jpg", "b.jpg"],
            "not one image placeholder per image",
        ),
        (
            [
                {"from": "human", "value": "<image>\nand?"},
                {"from": "gpt", "value": "<image>"},
            ],
            ["a.jpg", "b.jpg"],
            "not one image placeholder per image, in human turns",
        ),
    ],
)
def test_invalid_samples_are_named_or_counted(conversations, image, reason):
    sample = Sample("s1", image, conversations)
    assert __import__("re").search(reason, validate(sample))
    builder = get_task_builder("conversation")()
    record = {"id": "s1", "conversations": conversations, **({"image": image} if image else {})}
    with pytest.raises(AnnotationFormatError, match="conversation sample 's1'"):
        list(builder.build([record]))
    skipping = get_task_builder("conversation")(on_error="skip")
    assert list(skipping.build([record])) == [] and sum(skipping.stats.dropped.values()) == 1


def test_multi_image_conversations_pass_through_with_their_image_lists():
    turns = [
        {"from": "human", "value": "<image>\nThis one,"},
        {"from": "gpt", "value": "a circle"},
        {"from": "human", "value": "and <image>\nthis one?"},
        {"from": "gpt", "value": "a square"},
    ]
    records = [
        {"id": "two", "image": ["a.jpg", "b.jpg"], "conversations": turns},
        {"id": "one", "image": ["a.jpg"], "conversations": turns[:2]},
    ]
    builder = get_task_builder("conversation")()
    built = [sample.to_record() for sample in builder.build(records)]
    assert [(r["id"], r["image"], r["conversations"]) for r in built] == [
        ("two", ["a.jpg", "b.jpg"], turns),
        ("one", ["a.jpg"], turns[:2]),
    ]
    assert builder.stats.written == 2 and not builder.stats.dropped


def test_build_command_from_a_coco_file(tmp_path, capsys):
    boxes = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 10, 50, 20]},
    ]
    path = coco_file(tmp_path, boxes).path
    assert (
        sphinx_data(
            [
                "build",
                "detection",
                "--source",
                "coco",
                str(path),
                "--out",
                str(tmp_path / "d.jsonl"),
            ]
        )
        == 2
    )
    assert "box [90, 10, 50, 20] is outside its 100x50 image" in capsys.readouterr().err
    assert not (tmp_path / "d.jsonl").exists()
    assert (
        sphinx_data(
            [
                "build",
                "detection",
                "--source",
                "coco",
                str(path),
                "--out",
                str(tmp_path / "d.jsonl"),
                "--on-error",
                "skip",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "1 records written, 1 dropped" in printed
        and "source: bbox [90, 10, 50, 20] is outside" in printed
    )
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 1
    assert (
        sphinx_data(
            ["build", "rec", "--source", "coco", str(path), "--out", str(tmp_path / "r.jsonl")]
        )
        == 2
    )
    assert (
        "Task 'rec' cannot be built from 'coco'; it takes ['refcoco-export', 'refcoco-pickle']"
        in capsys.readouterr().err
    )


def test_synth_then_mix(tmp_path, capsys):
    assert (
        sphinx_data(
            [
                "synth",
                "--out",
                str(tmp_path / "synth"),
                "--train",
                "30",
                "--val",
                "5",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    tasks = tmp_path / "synth" / "tasks" / "train"
    counts = {path.stem: len(path.read_text().splitlines()) for path in tasks.glob("*.jsonl")}
    assert set(counts) == {
        "vqa",
        "rec",
        "reg",
        "grounded_caption",
        "detection",
        "pose",
        "layout",
        "short_caption",
    }
    assert all(count > 0 for count in counts.values())
    record = json.loads((tasks / "rec.jsonl").read_text().splitlines()[0])
    assert (tmp_path / "synth" / record["image"]).is_file()
    config = tmp_path / "mix.json"
    config.write_text(
        json.dumps(
            {
                "sources": [
                    {"path": str(tasks / "vqa.jsonl"), "weight": 3},
                    {"path": str(tasks / "pose.jsonl"), "weight": 1},
                ],
                "total": 2000,
                "seed": 4,
            }
        )
    )
    assert sphinx_data(["mix", str(config), "--out", str(tmp_path / "mixed.jsonl")]) == 0
    tasks_drawn = Counter(
        json.loads(line)["meta"]["task"]
        for line in (tmp_path / "mixed.jsonl").read_text().splitlines()
    )
    assert abs(tasks_drawn["vqa"] / 2000 - 0.75) < 0.04
    first = (tmp_path / "mixed.jsonl").read_text()
    assert sphinx_data(["mix", str(config), "--out", str(tmp_path / "mixed2.jsonl")]) == 0
    assert (tmp_path / "mixed2.jsonl").read_text() == first
