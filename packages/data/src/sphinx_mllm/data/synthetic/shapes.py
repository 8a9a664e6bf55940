"""Scenes of coloured shapes: one to five circles, squares, triangles, stars and crosses in the
named colours, on a varied background. Shapes are placed with their boxes at least `GAP` pixels
apart, so every object is whole, visible, and alone in its exact pixel box."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sphinx_mllm.data.synthetic.backgrounds import paint_background
from sphinx_mllm.data.synthetic.colours import COLOUR_NAMES, COLOURS
from sphinx_mllm.data.synthetic.masks import Box, tight_box

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
}
GAP = 2  # pixels between the boxes of two shapes
MIN_IMAGE_SIZE = 32
_PLACEMENT_TRIES = 50


@dataclass(frozen=True, eq=False)
class ShapeObject:
    """One drawn shape: its colour and shape names, exact box, pixel count and outline."""

    colour: str
    shape: str
    bbox: Box
    area: int
    polygon: tuple[float, ...]  # COCO polygon, continuous pixel coordinates

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True, eq=False)
class ShapeScene:
    image: np.ndarray  # (height, width, 3) uint8
    objects: tuple[ShapeObject, ...]
    background: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def _outline(shape: str, side: int) -> list[tuple[float, float]]:
    """Polygon vertices of a shape in a `side`-pixel square, in pixel-index coordinates."""
    last = side - 1
    centre = last / 2
    if shape == "square":
        return [(0, 0), (last, 0), (last, last), (0, last)]
    if shape == "triangle":
        return [(centre, 0), (last, last), (0, last)]
    if shape == "star":
        outer, inner = centre, centre * 0.45
        shift = outer * (1 - math.cos(math.pi / 5)) / 2  # centre the star's height in the square
        return [
            (
                centre + radius * math.sin(k * math.pi / 5),
                centre + shift - radius * math.cos(k * math.pi / 5),
            )
            for k, radius in enumerate([outer, inner] * 5)
        ]
    if shape == "cross":
        arm = max(3, round(side / 3))
        a, b = (side - arm) // 2, (side - arm) // 2 + arm - 1
        return [(a, 0), (b, 0), (b, a), (last, a), (last, b), (b, b),
                (b, last), (a, last), (a, b), (0, b), (0, a), (a, a)]  # fmt: skip
    if shape == "circle":
        return [
            (centre + centre * math.cos(t), centre + centre * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ]
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}")


def rasterise_shape(shape: str, side: int) -> np.ndarray:
    """A `(side, side)` boolean mask of the shape, drawn without anti-aliasing."""
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse((0, 0, side - 1, side - 1), fill=255)
    else:
        draw.polygon(_outline(shape, side), fill=255)
    return np.asarray(canvas) > 0


def _apart(a: Box, b: Box) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax + aw + GAP <= bx or bx + bw + GAP <= ax or ay + ah + GAP <= by or by + bh + GAP <= ay


def _place(rng: np.random.Generator, size: int, taken: list[Box]) -> Box | None:
    low = max(8, round(0.16 * size))
    high = max(low, round(0.34 * size))
    for _ in range(_PLACEMENT_TRIES):
        side = int(rng.integers(low, high + 1))
        x, y = (int(v) for v in rng.integers(1, size - side, size=2))
        candidate = (x, y, side, side)
        if all(_apart(candidate, other) for other in taken):
            return candidate
    return None


def make_shape_scene(
    rng: np.random.Generator, size: int = 64, *, max_objects: int = 5
) -> ShapeScene:
    """A square scene of 1 to `max_objects` shapes (fewer when the image is too full)."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"Shape scenes need at least {MIN_IMAGE_SIZE} pixels a side, got {size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    image, background = paint_background(rng, size, size)
    wanted = int(rng.integers(1, max_objects + 1))
    taken: list[Box] = []
    objects = []
    for _ in range(wanted):
        slot = _place(rng, size, taken)
        if slot is None:
            continue
        taken.append(slot)
        x, y, side, _ = slot
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        mask = rasterise_shape(shape, side)
        image[y : y + side, x : x + side][mask] = COLOURS[colour]
        local = tight_box(mask)
        polygon = tuple(
            round(v + offset + 0.5, 2)  # pixel index -> continuous coordinate of its centre
            for px, py in _outline(shape, side)
            for v, offset in ((px, x), (py, y))
        )
        objects.append(
            ShapeObject(
                colour=colour,
                shape=shape,
                bbox=(x + local[0], y + local[1], local[2], local[3]),
                area=int(mask.sum()),
                polygon=polygon,
            )
        )
    return ShapeScene(image=image, objects=tuple(objects), background=background)
