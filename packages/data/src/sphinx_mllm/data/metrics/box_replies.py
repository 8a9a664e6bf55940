"""Boxes for the box metrics: those a reply writes, and the ground truth a record keeps.

Replies are read with the codec's tolerant parser (`parse_boxes`): only well-formed groups of
4 numbers are boxes, so a bracket of 3 numbers, a point or prose is no box. A box is mapped from
the text frame (SPHINX's padded square by default) back to pixels of the original image, where
the ground truth lives. A box with a non-finite number (310 digits read as inf) is dropped.

Ground truth is `meta.objects`: ``{name: [[x1, y1, x2, y2], ...]}`` in pixels of the original
image, the name being a category (detection, layout) or a phrase (grounded captions), with
`meta.image_size` ``[width, height]``. The task builders write both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sphinx_mllm.data.boxes import Box, Frame, StyleLike, denormalize_box, parse_boxes
from sphinx_mllm.data.metrics.task_metric import Record, meta_field, normalize_phrase, record_id

OBJECTS_HELP = "{name: [[x1, y1, x2, y2], ...]} in pixels of the original image"


def reply_boxes(
    text: str, image_size: tuple[int, int], style: StyleLike = "sphinx", frame: Frame = "padded"
) -> list[tuple[str | None, Box]]:
    """(normalised phrase or None, pixel xyxy box) for every box of the reply, in order."""
    found = []
    for group in parse_boxes(text, style):
        phrase = None if group.phrase is None else normalize_phrase(group.phrase)
        for box in group.boxes:
            if all(math.isfinite(value) for value in box):
                found.append((phrase, denormalize_box(box, image_size, frame)))
    return found


def record_image_size(record: Record, metric: str) -> tuple[int, int]:
    """`meta.image_size` as (width, height), checked."""
    size = meta_field(record, "image_size", metric, "[width, height] of the original image")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int | float) and v > 0 for v in size)
    ):
        raise ValueError(
            f"record {record_id(record)!r}: meta.image_size must be [width, height] > 0; "
            f"got {size!r}"
        )
    return int(size[0]), int(size[1])


def record_objects(record: Record, metric: str) -> dict[str, list[Box]]:
    """`meta.objects` with names normalised (boxes of names equal after normalising merge)."""
    objects = meta_field(record, "objects", metric, OBJECTS_HELP)
    if not isinstance(objects, Mapping):
        raise ValueError(
            f"record {record_id(record)!r}: meta.objects must be {OBJECTS_HELP}; got {objects!r}"
        )
    truth: dict[str, list[Box]] = {}
    for name, boxes in objects.items():
        if not isinstance(boxes, list | tuple):
            raise ValueError(
                f"record {record_id(record)!r}: meta.objects[{name!r}] must be a list of boxes; "
                f"got {boxes!r}"
            )
        truth.setdefault(normalize_phrase(str(name)), []).extend(
            _pixel_box(box, record, f"a box of meta.objects[{name!r}]") for box in boxes
        )
    return truth


def record_box(record: Record, key: str, metric: str, what: str) -> Box:
    """The pixel box `meta[key]`, checked."""
    return _pixel_box(meta_field(record, key, metric, what), record, f"meta.{key}")


def _pixel_box(box: object, record: Record, what: str) -> Box:
    if (
        not isinstance(box, list | tuple)
        or len(box) != 4
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in box)
        or box[2] < box[0]
        or box[3] < box[1]
    ):
        raise ValueError(
            f"record {record_id(record)!r}: {what} must be [x1, y1, x2, y2] in pixels with "
            f"x1 <= x2 and y1 <= y2; got {box!r}"
        )
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
