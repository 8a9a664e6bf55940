"""Detection-like tasks from COCO-format files: detection ("Detect all {category} shown in the
image."), layout (every layout element with its category), and pose ("Detect the key points of
the person in the region [box]." -> the labelled COCO keypoints). Boxes per sample are capped.

Each sample's `meta` keeps the ground truth its metric needs (`sphinx_mllm.data.metrics`), in
pixels of the original image: detection and layout `objects` ``{category: [[x1, y1, x2, y2]]}``
with every box, the cap notwithstanding (the truth a reply is scored against); pose `bbox_xyxy`
(the person's box) and `keypoints` ``{name: [x, y]}`` of the labelled keypoints."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sphinx_mllm.data.boxes import COCO_KEYPOINT_NAMES, coco_keypoints, format_keypoints
from sphinx_mllm.data.readers.coco import CocoFile
from sphinx_mllm.data.tasks.base import Sample, TaskBuilder, one_round
from sphinx_mllm.data.tasks.geometry import BoxWriter

DETECTION = "Detect all {category} shown in the image."
LAYOUT = (
    "Please detect all layout elements and provide their categories and bounding box coordinates."
)
POSE = "Detect the key points of the person in the region {box}."


class CocoTask(TaskBuilder):
    """A builder reading one COCO-format file (its source is the `CocoFile`)."""

    def __init__(
        self,
        *,
        style: str = "sphinx",
        frame: str = "padded",
        skip_crowd: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.writer = BoxWriter(style, frame)
        self.skip_crowd = skip_crowd

    def grouped(self, coco: CocoFile) -> Iterator[tuple[Any, dict[int, list]]]:
        """(image, {category id: [xyxy boxes]}) for each image with objects, in image-id order."""
        by_image = coco.objects_by_image()
        for image_id in sorted(by_image):
            by_category: dict[int, list] = {}
            for item in by_image[image_id]:
                if self.skip_crowd and item.iscrowd:
                    self.drop("crowd annotation")
                    continue
                by_category.setdefault(item.category_id, []).append(item.xyxy)
            if by_category:
                yield coco.images[image_id], by_category


class Detection(CocoTask):
    """One sample per (image, category present): every box of that category."""

    name = "detection"
    default_instruction = DETECTION

    def samples(self, source: Iterable[CocoFile]) -> Iterator[Sample]:
        for coco in source:
            for image, by_category in self.grouped(coco):
                for category_id, boxes in sorted(by_category.items()):
                    category = coco.category_name(category_id)
                    sample_id = f"det-{image.id}-{category_id}"
                    prompt = self.instructions.for_sample(sample_id, category=category)
                    answer = self.writer.phrase(category, self.cap(boxes), image.size)
                    meta = {"image_size": list(image.size), "objects": _objects({category: boxes})}
                    yield Sample(sample_id, image.file_name, one_round(prompt, answer), meta)


class Layout(CocoTask):
    """One sample per page: every element, grouped by category, in category order."""

    name = "layout"
    default_instruction = LAYOUT

    def samples(self, source: Iterable[CocoFile]) -> Iterator[Sample]:
        for coco in source:
            for image, by_category in self.grouped(coco):
                budget = self.max_boxes
                parts = []
                for category_id, boxes in sorted(by_category.items()):
                    kept = boxes[: max(0, budget)]
                    self.stats.boxes_dropped += len(boxes) - len(kept)
                    budget -= len(kept)
                    if kept:
                        parts.append(
                            self.writer.phrase(coco.category_name(category_id), kept, image.size)
                        )
                sample_id = f"layout-{image.id}"
                prompt = self.instructions.for_sample(sample_id)
                named = {coco.category_name(i): boxes for i, boxes in sorted(by_category.items())}
                meta = {"image_size": list(image.size), "objects": _objects(named)}
                yield Sample(sample_id, image.file_name, one_round(prompt, " ".join(parts)), meta)


class Pose(CocoTask):
    """One sample per person with labelled keypoints: the box in, the keypoints out."""

    name = "pose"
    default_instruction = POSE

    def __init__(self, *, min_keypoints: int = 1, **options: Any) -> None:
        super().__init__(**options)
        self.min_keypoints = min_keypoints

    def samples(self, source: Iterable[CocoFile]) -> Iterator[Sample]:
        for coco in source:
            for item in coco.objects():
                if item.keypoints is None or (self.skip_crowd and item.iscrowd):
                    self.drop("no keypoints" if item.keypoints is None else "crowd annotation")
                    continue
                image = coco.images[item.image_id]
                named = coco_keypoints(item.keypoints, image.size, self.writer.frame)
                if len(named) < self.min_keypoints:
                    self.drop("too few labelled keypoints")
                    continue
                sample_id = f"pose-{item.id}"
                prompt = self.instructions.for_sample(
                    sample_id, box=self.writer.boxes([item.xyxy], image.size)
                )
                answer = format_keypoints(named, self.writer.style)
                meta = {
                    "image_size": list(image.size),
                    "bbox_xyxy": list(item.xyxy),
                    "keypoints": _labelled_pixels(item.keypoints),
                }
                yield Sample(sample_id, image.file_name, one_round(prompt, answer), meta)


def _objects(boxes_by_name: dict[str, list]) -> dict[str, list[list[float]]]:
    """Ground truth for the box metrics: every box of each name, as JSON lists."""
    return {name: [list(box) for box in boxes] for name, boxes in boxes_by_name.items()}


def _labelled_pixels(keypoints: tuple[float, ...]) -> dict[str, list[float]]:
    """{name: [x, y]} in pixels of the COCO keypoints with visibility 1 or 2."""
    return {
        name: [keypoints[3 * i], keypoints[3 * i + 1]]
        for i, name in enumerate(COCO_KEYPOINT_NAMES)
        if keypoints[3 * i + 2] > 0
    }


def detection(**options: Any) -> Detection:
    """Detection per category, SPHINX's "Detect all {category} shown in the image."."""
    return Detection(**options)


def layout(**options: Any) -> Layout:
    """Document layout (PubLayNet, DocLayNet): every element with its category and box."""
    return Layout(**options)


def pose(**options: Any) -> Pose:
    """Human pose: the 17 COCO keypoints of the person in a box, labelled ones only."""
    return Pose(**options)
