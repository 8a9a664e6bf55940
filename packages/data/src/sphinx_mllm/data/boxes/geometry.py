"""Box and point geometry: COCO xywh <-> xyxy, pixel <-> normalised [0, 1] coordinates, IoU.

Two normalisation frames:

- ``"padded"`` (SPHINX's default, also LLaVA-1.5's and Shikra's): the image is pasted centred on
  a square canvas of side ``S = max(w, h)``; the short axis is shifted by
  ``off = (S - side) // 2`` (integer division, as the reference `expand2square` does) and both
  axes are divided by ``S``: ``x' = (x + off_x) / S``, ``y' = (y + off_y) / S``.
- ``"per_axis"``: ``x' = x / w``, ``y' = y / h`` (Qwen-VL, MiniGPT-v2: the image is stretched).

Image sizes are ``(width, height)`` in pixels, as PIL's ``Image.size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

Box = tuple[float, float, float, float]
Point = tuple[float, float]
Frame = Literal["padded", "per_axis"]

FRAMES: tuple[str, ...] = get_args(Frame)


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """COCO ``[x, y, w, h]`` (top-left corner and size) to ``[x1, y1, x2, y2]``."""
    x, y, w, h = _four(box, "xywh box")
    return (x, y, x + w, y + h)


def xyxy_to_xywh(box: Sequence[float]) -> Box:
    """``[x1, y1, x2, y2]`` to COCO ``[x, y, w, h]``."""
    x1, y1, x2, y2 = _four(box, "xyxy box")
    return (x1, y1, x2 - x1, y2 - y1)


def frame_transform(image_size: Sequence[int], frame: Frame = "padded") -> tuple[Point, Point]:
    """``((scale_x, scale_y), (off_x, off_y))`` with ``normalised = (pixel + off) / scale``."""
    width, height = _size(image_size)
    if frame == "padded":
        side = max(width, height)
        return (side, side), ((side - width) // 2, (side - height) // 2)
    if frame == "per_axis":
        return (width, height), (0, 0)
    raise ValueError(f"unknown frame {frame!r}; expected one of {FRAMES}")


def normalize_point(
    point: Sequence[float], image_size: Sequence[int], frame: Frame = "padded"
) -> Point:
    """Pixel ``(x, y)`` to ``[0, 1]`` coordinates in `frame`, clamped to ``[0, 1]``."""
    x, y = _two(point, "point")
    (sx, sy), (ox, oy) = frame_transform(image_size, frame)
    return (_clamp01((x + ox) / sx), _clamp01((y + oy) / sy))


def denormalize_point(
    point: Sequence[float], image_size: Sequence[int], frame: Frame = "padded"
) -> Point:
    """``[0, 1]`` coordinates in `frame` back to pixels of the original image (not clamped)."""
    x, y = _two(point, "point")
    (sx, sy), (ox, oy) = frame_transform(image_size, frame)
    return (x * sx - ox, y * sy - oy)


def normalize_box(box: Sequence[float], image_size: Sequence[int], frame: Frame = "padded") -> Box:
    """Pixel ``[x1, y1, x2, y2]`` to ``[0, 1]`` coordinates in `frame`, clamped to ``[0, 1]``."""
    x1, y1, x2, y2 = _four(box, "box")
    return (
        *normalize_point((x1, y1), image_size, frame),
        *normalize_point((x2, y2), image_size, frame),
    )


def denormalize_box(
    box: Sequence[float], image_size: Sequence[int], frame: Frame = "padded"
) -> Box:
    """``[0, 1]`` box in `frame` back to pixel ``[x1, y1, x2, y2]`` of the original image."""
    x1, y1, x2, y2 = _four(box, "box")
    return (
        *denormalize_point((x1, y1), image_size, frame),
        *denormalize_point((x2, y2), image_size, frame),
    )


def to_padded_pixels(box: Sequence[float], image_size: Sequence[int]) -> Box:
    """Pixel box of the original image shifted onto the padded square canvas (no scaling)."""
    x1, y1, x2, y2 = _four(box, "box")
    _, (ox, oy) = frame_transform(image_size, "padded")
    return (x1 + ox, y1 + oy, x2 + ox, y2 + oy)


def box_area(box: Sequence[float]) -> float:
    """Area of an xyxy box; an inverted box (x2 < x1 or y2 < y1) has area 0."""
    x1, y1, x2, y2 = _four(box, "box")
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes in the same units; 0 when the union is empty."""
    ax1, ay1, ax2, ay2 = _four(a, "box")
    bx1, by1, bx2, by2 = _four(b, "box")
    inter = box_area((max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(s <= 0 for s in image_size):
        raise ValueError(f"image_size must be (width, height) > 0; got {tuple(image_size)!r}")
    return int(image_size[0]), int(image_size[1])


def _two(values: Sequence[float], what: str) -> Point:
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"a {what} needs 2 finite numbers; got {tuple(values)!r}")
    return (float(values[0]), float(values[1]))


def _four(values: Sequence[float], what: str) -> Box:
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"a {what} needs 4 finite numbers; got {tuple(values)!r}")
    return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))
