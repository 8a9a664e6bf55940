"""Referring-expression comprehension accuracy (Acc@0.5) under SPHINX's protocol.

Source: LLaMA2-Accessory `accessory/eval_mm/evaluate.py` (metric "miou0.5"). The first ``[...]``
of the answer must hold exactly 4 numbers, else the prediction is wrong. They are normalised
coordinates in the padded square frame: they are scaled by ``max(w, h)`` and compared with the
ground-truth pixel box shifted onto the padded square; a hit is IoU >= 0.5. One difference: when
the answer has no bracket at all, the reference script falls back to parsing the text before the
first "]"; here no bracket is a miss, as the recipe states. The bracket is read with the codec's
tolerant SPHINX reader, so LLaVA's "[0.1, 0.2, 0.3, 0.4]" counts too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from sphinx_mllm.data.boxes import (
    BoxParseError,
    box_iou,
    frame_transform,
    parse_first_bracket,
    to_padded_pixels,
)
from sphinx_mllm.data.metrics.box_replies import record_box, record_image_size
from sphinx_mllm.data.metrics.task_metric import MeanMetric, Record


def rec_iou(
    prediction_text: str,
    gt_box_xyxy_pixels: Sequence[float],
    image_size: Sequence[int],
) -> float:
    """IoU of the answer's first bracket with the ground truth; 0.0 when it is not 4 numbers."""
    try:
        numbers = parse_first_bracket(prediction_text, "sphinx")
    except BoxParseError:
        return 0.0
    if numbers is None or len(numbers) != 4 or not all(map(math.isfinite, numbers)):
        return 0.0  # a coordinate of 310 digits reads as inf: a miss, not an error
    (side, _), _ = frame_transform(image_size, "padded")
    predicted = tuple(value * side for value in numbers)
    return box_iou(predicted, to_padded_pixels(gt_box_xyxy_pixels, image_size))


def rec_hit(
    prediction_text: str,
    gt_box_xyxy_pixels: Sequence[float],
    image_size: Sequence[int],
    threshold: float = 0.5,
) -> bool:
    """Whether the answer's box hits the ground truth (IoU >= `threshold`)."""
    return rec_iou(prediction_text, gt_box_xyxy_pixels, image_size) >= threshold


def rec_accuracy(
    predictions: Sequence[str],
    gt_boxes_xyxy_pixels: Sequence[Sequence[float]],
    image_sizes: Sequence[Sequence[int]],
    threshold: float = 0.5,
) -> float:
    """The fraction of answers that hit their ground truth (Acc@0.5 by default)."""
    if not len(predictions) == len(gt_boxes_xyxy_pixels) == len(image_sizes):
        raise ValueError(
            f"rec_accuracy needs one box and size per prediction; got {len(predictions)} "
            f"predictions, {len(gt_boxes_xyxy_pixels)} boxes, {len(image_sizes)} sizes"
        )
    if not predictions:
        raise ValueError("rec_accuracy needs at least one prediction")
    hits = sum(
        rec_hit(text, box, size, threshold)
        for text, box, size in zip(predictions, gt_boxes_xyxy_pixels, image_sizes, strict=True)
    )
    return hits / len(predictions)


class RecAccuracy(MeanMetric):
    """REC Acc@0.5 against `meta.bbox_xyxy` on `meta.image_size` (pixels of the original image);
    each record's IoU is its figure `iou`, and their mean the extra `miou`."""

    name: ClassVar[str] = "rec"
    summary_names: ClassVar[dict[str, str]] = {"iou": "miou"}

    def __init__(self, *, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def score_one(self, prediction: str, record: Record) -> tuple[float, dict[str, float]]:
        box = record_box(record, "bbox_xyxy", self.name, "the referent's box in pixels")
        size = record_image_size(record, self.name)
        iou = rec_iou(prediction, box, size)
        return float(iou >= self.threshold), {"iou": iou}
