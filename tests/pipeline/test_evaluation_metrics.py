"""Evaluation scores each task with its own metric: `auto` picks by `meta.task`, explicit names
apply one metric to all, corpus scores come from all of a task's records, and a record lacking
its ground truth stops the evaluation before anything is generated."""

import json

import pytest

from sphinx_mllm.data.metrics import TASK_METRICS
from sphinx_mllm.pipeline.evaluation import (
    METRICS,
    Prediction,
    check_ground_truth,
    metric_for,
    score_predictions,
)

AUTO = {
    "vqa": "vqa",
    "rec": "rec",
    "reg": "cider",
    "grounded_caption": "phrase_f1",
    "detection": "detection_map",
    "pose": "pck",
    "layout": "layout_map",
    "short_caption": "cider",
}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """The demo's held-out records of every task (synthetic, 3 items of each kind)."""
    from sphinx_mllm.data.cli import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth(root, seed=3, train=0, val=3, report=False)
    return {
        path.stem: [json.loads(line) for line in path.open()]
        for path in sorted((root / "tasks" / "val").glob("*.jsonl"))
    }


def _score(records, replies, metric="auto"):
    predictions = [
        Prediction(
            record_id=record["id"],
            task=record["meta"]["task"],
            metric=metric_for(record, metric),
            question="",
            reference=record["conversations"][-1]["value"],
            prediction=reply,
        )
        for record, reply in zip(records, replies, strict=True)
    ]
    return score_predictions(predictions, records)


def _everything(held_out):
    return [record for records in held_out.values() for record in records]


def test_auto_picks_each_tasks_metric_and_the_reference_scores_full_marks(held_out):
    assert set(held_out) == set(AUTO)
    records = _everything(held_out)
    report = _score(records, [r["conversations"][-1]["value"] for r in records])
    rows = report.by_task()
    assert {task: row["metric"] for task, row in rows.items()} == AUTO
    for task, row in rows.items():
        assert row["count"] == len(held_out[task])
        if row["metric"] == "cider":
            assert row["score"] > 5  # CIDEr-D runs from 0 to 10 (pycocoevalcap)
        else:
            assert row["score"] == pytest.approx(1.0), task
    assert set(rows["detection"]) == {"metric", "count", "score", "coco_map"}
    assert set(rows["rec"]) == {"metric", "count", "score", "miou"}
    assert set(rows["grounded_caption"]) >= {"precision", "recall"}
    by_metric = {p.metric: p for p in report.predictions}
    assert by_metric["detection_map"].score is None and by_metric["rec"].extra["iou"] > 0.5
    assert by_metric["phrase_f1"].extra["f1"] == 1.0
    json.dumps(report.to_dict())  # per-record None scores serialise


def test_replies_without_boxes_or_words_score_zero_everywhere(held_out):
    records = _everything(held_out)
    report = _score(records, ["[0.1, 0.2] ?"] * len(records))
    assert {task: row["score"] for task, row in report.by_task().items()} == dict.fromkeys(AUTO, 0)


def test_corpus_metrics_are_not_a_mean_of_records(held_out):
    records = held_out["detection"]
    replies = [r["conversations"][-1]["value"] for r in records]
    replies[0] = "<p>x</p> [0.00,0.00,0.01,0.01]; " + replies[0]  # a false positive ranked first
    row = _score(records, replies).by_task()["detection"]
    assert 0 < row["score"] < 1 and row["count"] == len(records)


def test_an_explicit_metric_scores_every_task_and_rows_split_mixed_metrics(held_out):
    records = held_out["detection"] + held_out["vqa"]
    replies = [r["conversations"][-1]["value"] for r in records]
    rows = _score(records, replies, metric="exact").by_task()
    assert {row["metric"] for row in rows.values()} == {"exact"}
    assert rows["detection"]["score"] == 1.0  # the reference text is its own exact match
    records = held_out["rec"][:2]  # one file, records of one task under two metrics
    predictions = [
        Prediction(record_id=r["id"], task="shapes", metric=name, question="", reference="",
                   prediction="[0.1,0.1,0.2,0.2]")
        for r, name in zip(records, ["exact", "rec"], strict=True)
    ]  # fmt: skip
    rows = score_predictions(predictions, records).by_task()
    assert set(rows) == {"shapes (exact)", "shapes (rec)"}


def test_metric_names_and_missing_ground_truth(held_out):
    assert set(METRICS) == {"auto", *TASK_METRICS}
    with pytest.raises(ValueError, match="Unknown metric 'map'"):
        metric_for(held_out["vqa"][0], "map")
    bare = dict(held_out["pose"][1], meta={"task": "pose", "image_size": [96, 96]})
    with pytest.raises(ValueError, match=rf"record {bare['id']!r}.*meta\.keypoints"):
        check_ground_truth([*held_out["pose"], bare], "auto")
    check_ground_truth(_everything(held_out), "auto")


def test_evaluate_checks_ground_truth_before_generating(held_out, tmp_path, monkeypatch):
    from sphinx_mllm.pipeline import evaluation
    from sphinx_mllm.pipeline.training.data import DataSource

    record = {key: v for key, v in held_out["detection"][0].items() if key != "image"}
    record["conversations"] = [
        {"from": "human", "value": "Detect all circles."},
        record["conversations"][-1],
    ]
    record["meta"] = {"task": "detection", "image_size": [64, 64]}  # no objects
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps(record) + "\n")

    def never(*args, **kwargs):
        raise AssertionError("generated before the ground truth was checked")

    monkeypatch.setattr(evaluation, "generate", never)
    with pytest.raises(ValueError, match=rf"record {record['id']!r}.*meta\.objects"):
        evaluation.evaluate(object(), [DataSource.parse(str(data))])
