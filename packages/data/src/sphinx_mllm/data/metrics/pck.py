"""PCK@0.2 of pose replies: the share of labelled keypoints placed close enough to the truth.

A keypoint is correct when the distance between the predicted and true point, in pixels of the
original image, is below ``0.2 * max(w, h)`` of the person's box: mmpose's `PCKAccuracy` with
``norm_item="bbox"`` (threshold 0.2, strict ``<``). Only the record's labelled keypoints count
(`meta.keypoints`, ``{name: [x, y]}`` in pixels; the pose task writes those with COCO
visibility 1 or 2), against the box `meta.bbox_xyxy` and `meta.image_size`.

The reply is read as named points, ``<p>left shoulder</p> [0.41,0.30]``, names compared
normalised (case, underscores, whitespace); the first point written under a name is its
prediction. A labelled keypoint the reply does not name, or names without a well-formed point,
is wrong; points under names the record does not label are ignored.

Per record: its fraction of correct keypoints. Over a corpus: correct keypoints over all
labelled keypoints (so a person with 17 labelled keypoints weighs more than one with 3).
Why our own loop: the formula is one line, and mmpose would bring torch into sphinx-data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

from sphinx_mllm.data.boxes import Frame, Point, StyleLike, denormalize_point, parse_points
from sphinx_mllm.data.metrics.box_replies import record_box, record_image_size
from sphinx_mllm.data.metrics.task_metric import (
    MetricResult,
    Record,
    TaskMetric,
    meta_field,
    normalize_phrase,
    record_id,
)


def reply_keypoints(
    text: str, image_size: tuple[int, int], style: StyleLike = "sphinx", frame: Frame = "padded"
) -> dict[str, Point]:
    """{normalised name: pixel point} of the first point written under each name."""
    found: dict[str, Point] = {}
    for group in parse_points(text, style):
        if group.phrase is None:
            continue
        name = normalize_phrase(group.phrase)
        point = group.points[0]
        if name not in found and all(math.isfinite(v) for v in point):
            found[name] = denormalize_point(point, image_size, frame)
    return found


class Pck(TaskMetric):
    """Percentage of correct keypoints at `threshold` times the person box's larger side."""

    name: ClassVar[str] = "pck"

    def __init__(
        self, *, threshold: float = 0.2, style: StyleLike = "sphinx", frame: Frame = "padded"
    ) -> None:
        self.threshold, self.style, self.frame = threshold, style, frame
        self._counts: list[tuple[int, int]] = []

    def add(self, prediction: str, record: Record) -> dict[str, float]:
        size = record_image_size(record, self.name)
        truth = _labelled_keypoints(record, self.name)
        reach = self.threshold * _box_side(record, self.name)
        found = reply_keypoints(prediction, size, self.style, self.frame)
        correct = sum(
            name in found and math.dist(found[name], point) < reach for name, point in truth.items()
        )
        self._counts.append((correct, len(truth)))
        return {}

    def result(self) -> MetricResult:
        self._need_records(len(self._counts))
        correct = sum(c for c, _ in self._counts)
        labelled = sum(n for _, n in self._counts)
        per_record = tuple(c / n for c, n in self._counts)
        return MetricResult(correct / labelled, len(self._counts), {}, per_record)


def _labelled_keypoints(record: Record, metric: str) -> dict[str, Point]:
    keypoints = meta_field(record, "keypoints", metric, "{name: [x, y]} of labelled keypoints")
    bad = not isinstance(keypoints, Mapping) or not keypoints
    if not bad:
        points = {normalize_phrase(str(k)): v for k, v in keypoints.items()}
        bad = not all(
            isinstance(p, list | tuple)
            and len(p) == 2
            and all(isinstance(v, int | float) and math.isfinite(v) for v in p)
            for p in points.values()
        )
    if bad:
        raise ValueError(
            f"record {record_id(record)!r}: meta.keypoints must map each labelled keypoint's "
            f"name to [x, y] in pixels, at least one; got {keypoints!r}"
        )
    return {name: (float(p[0]), float(p[1])) for name, p in points.items()}


def _box_side(record: Record, metric: str) -> float:
    x1, y1, x2, y2 = record_box(record, "bbox_xyxy", metric, "the person's box in pixels")
    side = max(x2 - x1, y2 - y1)
    if side <= 0:
        raise ValueError(
            f"record {record_id(record)!r}: meta.bbox_xyxy must be a box of positive size; "
            f"got {[x1, y1, x2, y2]!r}"
        )
    return side
