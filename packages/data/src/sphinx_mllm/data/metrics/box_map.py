"""Box mean average precision of detection and layout replies, computed by pycocotools.

Scores: AP@0.5 (PASCAL-style threshold, COCO's 101-point interpolation) and, as the extra
`coco_map`, COCO's AP averaged over IoU 0.50:0.05:0.95; both are the mean over categories that
have ground truth, at most 100 boxes per record and category, all object sizes, exactly as
`pycocotools.cocoeval.COCOeval` reports `stats[1]` and `stats[0]`. Each record is one COCO
"image"; boxes are compared in pixels of the original image (see `box_replies`).

Which category a reply's box belongs to:
- `DetectionMap` ("Detect all {category} shown in the image."): every box of the reply belongs
  to the one category the record asks for (its `meta.objects` must hold exactly one name), so
  the phrase the model echoes does not matter.
- `LayoutMap` (every element with its category): a box belongs to the category its phrase names
  (compared normalised). A box without a phrase is dropped; one naming a category that no record
  has in its ground truth is kept but, by COCO's rule, a category without ground truth has no AP
  and does not enter the mean.

Confidence: text has none, yet AP ranks boxes. A box's score is ``1 / (1 + k)``, k its position
among the reply's boxes: the first box of every reply ranks above every second box, and so on.
Later boxes of a generated list are the ones conditioned on more of the model's own output, so
rank is the best proxy the text offers; ties (equal positions) keep the order records were added.
A perfect set of replies scores 1 and a reply without boxes adds only misses, whatever the ranks.
A box written inverted (x2 < x1) counts as a detection of zero area: a false positive.

Why pycocotools rather than our own loop: it is the reference the published numbers come from.
"""

from __future__ import annotations

import contextlib
import io
from abc import abstractmethod
from typing import Any, ClassVar

from sphinx_mllm.data.boxes import Box, Frame, StyleLike
from sphinx_mllm.data.metrics.box_replies import record_image_size, record_objects, reply_boxes
from sphinx_mllm.data.metrics.task_metric import MetricResult, Record, TaskMetric, record_id

Found = list[tuple[str | None, Box]]
Truth = dict[str, list[Box]]


class BoxMap(TaskMetric):
    """Shared by `DetectionMap` and `LayoutMap`: collects ground truth and ranked boxes."""

    def __init__(self, *, style: StyleLike = "sphinx", frame: Frame = "padded") -> None:
        self.style, self.frame = style, frame
        self._sizes: list[tuple[int, int]] = []
        self._truth: list[dict[str, list[Box]]] = []
        self._boxes: list[list[tuple[str, Box, float]]] = []

    @abstractmethod
    def categories_of(self, found: Found, truth: Truth, record: Record) -> list[tuple[str, Box]]:
        """The (category, box) pairs of a reply's boxes."""

    def add(self, prediction: str, record: Record) -> dict[str, float]:
        size = record_image_size(record, self.name)
        truth = record_objects(record, self.name)
        found = reply_boxes(prediction, size, self.style, self.frame)
        boxes = self.categories_of(found, truth, record)
        self._sizes.append(size)
        self._truth.append(truth)
        self._boxes.append([(name, box, 1.0 / (1 + k)) for k, (name, box) in enumerate(boxes)])
        return {"boxes": float(len(boxes))}

    def result(self) -> MetricResult:
        self._need_records(len(self._sizes))
        if not any(boxes for truth in self._truth for boxes in truth.values()):
            raise ValueError(f"the {self.name} metric has no ground-truth box in any record")
        ap50, ap = coco_box_ap(self._sizes, self._truth, self._boxes)
        return MetricResult(ap50, len(self._sizes), {"coco_map": ap}, (None,) * len(self._sizes))


class DetectionMap(BoxMap):
    """mAP@0.5 of per-category detection replies (COCO mAP as an extra)."""

    name: ClassVar[str] = "detection_map"

    def categories_of(self, found: Found, truth: Truth, record: Record) -> list[tuple[str, Box]]:
        if len(truth) != 1:
            raise ValueError(
                f"record {record_id(record)!r}: the {self.name} metric needs meta.objects to name "
                f"the one category asked for; got {sorted(truth)}"
            )
        (category,) = truth
        return [(category, box) for _, box in found]


class LayoutMap(BoxMap):
    """mAP@0.5 of replies that name each box's category (layout; COCO mAP as an extra)."""

    name: ClassVar[str] = "layout_map"

    def categories_of(self, found: Found, truth: Truth, record: Record) -> list[tuple[str, Box]]:
        return [(phrase, box) for phrase, box in found if phrase is not None]


def coco_box_ap(
    image_sizes: list[tuple[int, int]],
    truth: list[dict[str, list[Box]]],
    detections: list[list[tuple[str, Box, float]]],
) -> tuple[float, float]:
    """(AP@0.5, AP@[.5:.95]) from pycocotools for pixel xyxy boxes, one entry per image:
    ground truth ``{category: [box]}`` and detections ``[(category, box, score)]``."""
    # imported here: only the box metrics need pycocotools, not every user of sphinx-data
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({name for t in truth for name in t} | {d[0] for ds in detections for d in ds})
    category = {name: index for index, name in enumerate(names, start=1)}
    images = [{"id": i, "width": w, "height": h} for i, (w, h) in enumerate(image_sizes, 1)]
    gt_annotations = [
        _annotation(image, category[name], box)
        for image, boxes_of in enumerate(truth, 1)
        for name, boxes in boxes_of.items()
        for box in boxes
    ]
    dt_annotations = [
        _annotation(image, category[name], box) | {"score": score}
        for image, found in enumerate(detections, 1)
        for name, box, score in found
    ]
    categories = [{"id": i, "name": name} for name, i in category.items()]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = _coco(COCO, images, categories, gt_annotations)
        detected = _coco(COCO, images, categories, dt_annotations)
        evaluation = COCOeval(ground_truth, detected, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1]), float(evaluation.stats[0])


def _annotation(image: int, category: int, box: Box) -> dict[str, Any]:
    x1, y1, x2, y2 = box
    width, height = max(0.0, x2 - x1), max(0.0, y2 - y1)
    return {
        "image_id": image,
        "category_id": category,
        "bbox": [x1, y1, width, height],
        "area": width * height,
        "iscrowd": 0,
    }


def _coco(coco_class: Any, images: list, categories: list, annotations: list) -> Any:
    """A COCO object built in memory; ids start at 1 (COCOeval reads a match with id 0 as none)."""
    coco = coco_class()
    numbered = [a | {"id": i} for i, a in enumerate(annotations, start=1)]
    coco.dataset = {"images": images, "categories": categories, "annotations": numbered}
    coco.createIndex()
    return coco
