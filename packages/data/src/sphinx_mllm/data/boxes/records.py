"""Records shared by the box formatter and parser: a phrase with its boxes or points."""

from __future__ import annotations

from dataclasses import dataclass, field

from sphinx_mllm.data.boxes.geometry import Box, Point


@dataclass(frozen=True)
class GroundedBoxes:
    """Normalised boxes, optionally named by a phrase; `span` is where the parser found them."""

    phrase: str | None
    boxes: tuple[Box, ...]
    span: tuple[int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class GroundedPoints:
    """Normalised points, optionally named by a phrase (a keypoint name, say)."""

    phrase: str | None
    points: tuple[Point, ...]
    span: tuple[int, int] | None = field(default=None, compare=False)
