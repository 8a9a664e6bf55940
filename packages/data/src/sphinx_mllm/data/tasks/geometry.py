"""The box text of the task builders: boxes and points written with the codec in a chosen style
and frame, and the check that every coordinate a text carries lies in [0, 1]."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from sphinx_mllm.data.boxes import (
    BoxParseError,
    format_boxes,
    format_phrase,
    normalize_box,
    parse_boxes,
    parse_points,
    xywh_to_xyxy,
)

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@functools.lru_cache(maxsize=4096)
def _sphinx_out_of_range(text: str) -> bool:
    """The SPHINX-style check, cached: the samples of one object (one per sentence of a ref)
    carry the same box text."""
    for inside in _BRACKETS.findall(text):
        for number in _NUMBER.findall(inside):
            if not 0.0 <= float(number) <= 1.0:
                return True
    return False


def coordinates_out_of_range(text: str, style: str = "sphinx") -> bool:
    """True when a box or point in `text` has a coordinate outside [0, 1] (or is malformed).
    SPHINX-style brackets are scanned directly (this runs on every record built); other
    styles go through the codec's parser."""
    if style == "sphinx":
        return "[" in text and _sphinx_out_of_range(text)
    try:
        groups = [*parse_boxes(text, style), *parse_points(text, style)]
    except BoxParseError:
        return True
    values = [
        v
        for group in groups
        for item in getattr(group, "boxes", getattr(group, "points", ()))
        for v in item
    ]
    return any(not 0.0 <= value <= 1.0 for value in values)


class BoxWriter:
    """Pixel boxes -> box text, in one style and frame (SPHINX: padded square, two decimals)."""

    def __init__(self, style: str = "sphinx", frame: str = "padded") -> None:
        self.style = style
        self.frame = frame

    def normalized(self, xyxy: Sequence[float], image_size: Sequence[int]) -> tuple[float, ...]:
        return normalize_box(xyxy, image_size, self.frame)

    def boxes(self, boxes_xyxy: Sequence[Sequence[float]], image_size: Sequence[int]) -> str:
        return format_boxes([self.normalized(box, image_size) for box in boxes_xyxy], self.style)

    def phrase(
        self, phrase: str, boxes_xyxy: Sequence[Sequence[float]], image_size: Sequence[int]
    ) -> str:
        return format_phrase(
            phrase, [self.normalized(box, image_size) for box in boxes_xyxy], self.style
        )

    @staticmethod
    def from_xywh(box: Sequence[float]) -> tuple[float, float, float, float]:
        return tuple(xywh_to_xyxy(box))
