"""Phrase-box F1@0.5 of grounded captions ("A <p>man</p> [box] rides a <p>horse</p> [box].").

Every box of the reply, with the phrase written before it, is one prediction; every box of a
phrase in the record's `meta.objects` (``{phrase: [pixel boxes]}``) is one ground-truth pair.
A prediction matches a ground-truth pair when their phrases are equal after normalising (case,
underscores, whitespace) and their IoU is at least 0.5. Matching is one-to-one and greedy by
IoU, highest first (COCO's convention, not a maximum matching). A box without a phrase matches
nothing. Then ``precision = matched / predicted``, ``recall = matched / ground truth`` and
``F1 = 2 matched / (predicted + ground truth)``; with nothing predicted and nothing to find,
all three are 1.

Per record: its own F1, precision and recall. Over a corpus: micro-averaged, i.e. computed from
the summed counts, so a caption with many phrases weighs more than one with a single phrase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from sphinx_mllm.data.boxes import Box, Frame, StyleLike, box_iou
from sphinx_mllm.data.metrics.box_replies import record_image_size, record_objects, reply_boxes
from sphinx_mllm.data.metrics.task_metric import MetricResult, Record, TaskMetric


def match_boxes(
    predicted: Sequence[tuple[str | None, Box]],
    truth: Sequence[tuple[str, Box]],
    threshold: float = 0.5,
) -> int:
    """How many predictions match a ground-truth pair one-to-one (same phrase, IoU >=
    `threshold`), matched greedily from the highest IoU down."""
    candidates = sorted(
        (-iou, i, j)
        for i, (phrase, box) in enumerate(predicted)
        if phrase is not None
        for j, (name, gt_box) in enumerate(truth)
        if name == phrase and (iou := box_iou(box, gt_box)) >= threshold
    )
    used_predictions: set[int] = set()
    used_truth: set[int] = set()
    for _, i, j in candidates:
        if i not in used_predictions and j not in used_truth:
            used_predictions.add(i)
            used_truth.add(j)
    return len(used_truth)


def f1_figures(matched: int, predicted: int, truth: int) -> dict[str, float]:
    """F1, precision and recall of `matched` pairs out of `predicted` and `truth`."""
    return {
        "f1": 2 * matched / (predicted + truth) if predicted + truth else 1.0,
        "precision": matched / predicted if predicted else float(not truth),
        "recall": matched / truth if truth else 1.0,
    }


class PhraseBoxF1(TaskMetric):
    """Grounded-caption F1@0.5 over phrase-box pairs (micro-averaged over the corpus)."""

    name: ClassVar[str] = "phrase_f1"

    def __init__(
        self, *, threshold: float = 0.5, style: StyleLike = "sphinx", frame: Frame = "padded"
    ) -> None:
        self.threshold, self.style, self.frame = threshold, style, frame
        self._counts: list[tuple[int, int, int]] = []

    def add(self, prediction: str, record: Record) -> dict[str, float]:
        size = record_image_size(record, self.name)
        truth = [(name, box) for name, boxes in record_objects(record, self.name).items()
                 for box in boxes]  # fmt: skip
        predicted = reply_boxes(prediction, size, self.style, self.frame)
        matched = match_boxes(predicted, truth, self.threshold)
        self._counts.append((matched, len(predicted), len(truth)))
        return f1_figures(matched, len(predicted), len(truth))

    def result(self) -> MetricResult:
        self._need_records(len(self._counts))
        matched, predicted, truth = (sum(column) for column in zip(*self._counts, strict=True))
        figures = f1_figures(matched, predicted, truth)
        per_record = tuple(f1_figures(*counts)["f1"] for counts in self._counts)
        return MetricResult(
            figures["f1"],
            len(self._counts),
            {"precision": figures["precision"], "recall": figures["recall"]},
            per_record,
        )
