"""Merging the one-round records of an image into multi-round conversations."""

from __future__ import annotations

import json

import pytest

from sphinx_mllm.data.cli import main, synth
from sphinx_mllm.data.multiturn import merge_rounds


def record(rid, image, question, answer, task="vqa"):
    first = f"<image>\n{question}" if image else question
    conversations = [{"from": "human", "value": first}, {"from": "gpt", "value": answer}]
    return {"id": rid, "image": image, "conversations": conversations, "meta": {"task": task}}


def test_records_of_an_image_become_one_conversation_in_order():
    records = [
        record("a1", "a.png", "What color?", "red"),
        record("b1", "b.png", "How many?", "2"),
        record("a2", "a.png", "What shape?", "star"),
        record("t1", None, "Hello", "Hi"),
        record("a3", "a.png", "Where is it?", "[0.10,0.20,0.30,0.40]", task="rec"),
    ]
    merged = list(merge_rounds(records))
    assert [m["id"] for m in merged] == ["a1+1", "b1", "t1", "a3"]
    first = merged[0]
    assert first["image"] == "a.png"
    assert first["conversations"] == [
        {"from": "human", "value": "<image>\nWhat color?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "What shape?"},
        {"from": "gpt", "value": "star"},
    ]
    assert first["meta"] == {"task": "vqa", "merged_ids": ["a1", "a2"]}
    assert merged[1] is records[1] and merged[2] is records[3]  # alone: unchanged


def test_max_rounds_splits_an_image_into_several_records():
    records = [record(f"q{i}", "a.png", f"Question {i}?", str(i)) for i in range(5)]
    merged = list(merge_rounds(records, max_rounds=2))
    assert [len(m["conversations"]) // 2 for m in merged] == [2, 2, 1]
    assert [m["conversations"][0]["value"].startswith("<image>\n") for m in merged] == [True] * 3
    answers = [turn["value"] for m in merged for turn in m["conversations"][1::2]]
    assert answers == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": "x", "image": "a.png", "conversations": []}, "no conversations"),
        (
            {"id": "x", "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]},
            "alternating",
        ),
        (
            {
                "id": "x",
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nQ"},
                    {"from": "gpt", "value": "A"},
                    {"from": "human", "value": "<image>\nQ2"},
                    {"from": "gpt", "value": "A2"},
                ],
            },
            "outside the first human turn",
        ),
    ],
)
def test_malformed_records_are_named(bad, message):
    with pytest.raises(ValueError, match=message) as caught:
        list(merge_rounds([record("ok", "a.png", "Q", "A"), {**bad, "meta": {"task": "vqa"}}]))
    assert "'x'" in str(caught.value)


def test_max_rounds_must_be_positive():
    with pytest.raises(ValueError, match="max_rounds"):
        list(merge_rounds([], max_rounds=0))


def test_synth_merges_training_questions_and_keeps_held_out_ones_alone(tmp_path):
    single = synth(tmp_path / "single", seed=2, train=6, val=3, report=False)
    multi = synth(tmp_path / "multi", seed=2, train=6, val=3, report=False, multi_round=True)
    assert multi["val"] == single["val"]
    for task in ("vqa", "rec", "reg"):
        lines = (tmp_path / "multi" / "tasks" / "train" / f"{task}.jsonl").read_text().splitlines()
        merged = [json.loads(line) for line in lines]
        assert len({r["image"] for r in merged}) == len(merged) == multi["train"][task]
        rounds = sum(len(r["conversations"]) // 2 for r in merged)
        assert rounds == single["train"][task]  # every question kept, once


def test_the_merge_rounds_command(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    records = [record(f"q{i}", f"{i % 2}.png", f"Q{i}", f"A{i}") for i in range(4)]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    assert main(["merge-rounds", str(source), "--out", str(out)]) == 0
    assert "2 records written" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 2
    written = out.read_text()
    assert main(["merge-rounds", str(source), "--out", str(out), "--max-rounds", "0"]) == 2
    assert "exists" in capsys.readouterr().err  # an existing output needs --force
    again = ["merge-rounds", str(source), "--out", str(out), "--max-rounds", "0", "--force"]
    assert main(again) == 2
    assert "max_rounds must be at least 1" in capsys.readouterr().err
    assert out.read_text() == written  # a failed run leaves the earlier output as it was
