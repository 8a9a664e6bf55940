"""Page-like images for document layout: a title, then one or two columns of text blocks
(lines of grey bars), section headings, bulleted lists, tables and figures, each block with its
PubLayNet category and the exact box of its ink. The paper is one flat colour that no ink uses,
so every non-paper pixel belongs to exactly one block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sphinx_mllm.data.synthetic.backgrounds import paint_background
from sphinx_mllm.data.synthetic.colours import COLOUR_NAMES, COLOURS
from sphinx_mllm.data.synthetic.masks import Box
from sphinx_mllm.data.synthetic.shapes import SHAPES, rasterise_shape

LAYOUT_CATEGORIES: tuple[str, ...] = ("text", "title", "list", "table", "figure")  # ids 1-5
MIN_PAGE_SIZE = 64


@dataclass(frozen=True)
class LayoutBlock:
    category: str
    bbox: Box


@dataclass(frozen=True, eq=False)
class Page:
    image: np.ndarray  # (height, width, 3) uint8
    blocks: tuple[LayoutBlock, ...]
    paper: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


class _Pen:
    """Draws filled rectangles (inclusive pixel corners) and remembers the box of its ink."""

    def __init__(self, image: Image.Image) -> None:
        self.canvas = image
        self.draw = ImageDraw.Draw(image)
        self.corners: list[int] | None = None

    def rect(self, x0: int, y0: int, x1: int, y1: int, fill: tuple[int, int, int]) -> None:
        self.draw.rectangle((x0, y0, x1, y1), fill=fill)
        self.mark(x0, y0, x1, y1)

    def mark(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """Record ink put down some other way (a pasted picture)."""
        c = self.corners
        self.corners = (
            [x0, y0, x1, y1]
            if c is None
            else [min(c[0], x0), min(c[1], y0), max(c[2], x1), max(c[3], y1)]
        )

    def bar(self, x: int, y: int, length: int, thickness: int, fill: tuple[int, int, int]) -> None:
        self.rect(x, y, x + max(length, 1) - 1, y + thickness - 1, fill)

    def box(self) -> Box:
        x0, y0, x1, y1 = self.corners
        return x0, y0, x1 - x0 + 1, y1 - y0 + 1


@dataclass
class _Frame:
    """Where a block may go: its left edge, top, width and the height left below it."""

    x: int
    y: int
    width: int
    room: int
    unit: int  # pixels per layout unit, so larger pages keep their proportions


def _grey(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    level = int(rng.integers(low, high + 1))
    return level, level, level


def _text(rng: np.random.Generator, pen: _Pen, f: _Frame, lines: int | None = None) -> int:
    pitch, thickness = 4 * f.unit, 2 * f.unit
    lines = lines or int(rng.integers(2, 8))
    ink = _grey(rng, 90, 150)
    for k in range(lines):
        share = rng.uniform(0.3, 0.9) if k == lines - 1 else rng.uniform(0.85, 1.0)
        pen.bar(f.x, f.y + k * pitch, round(share * f.width), thickness, ink)
    return (lines - 1) * pitch + thickness


def _heading(rng: np.random.Generator, pen: _Pen, f: _Frame) -> int:
    thickness = 3 * f.unit
    pen.bar(f.x, f.y, round(rng.uniform(0.3, 0.7) * f.width), thickness, _grey(rng, 30, 80))
    return thickness


def _list(rng: np.random.Generator, pen: _Pen, f: _Frame) -> int:
    pitch, thickness, indent = 4 * f.unit, 2 * f.unit, 4 * f.unit
    ink, y = _grey(rng, 90, 150), f.y
    for _ in range(int(rng.integers(2, 6))):
        pen.bar(f.x, y, thickness, thickness, ink)
        for k in range(int(rng.integers(1, 3))):
            length = round(rng.uniform(0.4, 1.0) * (f.width - indent))
            pen.bar(f.x + indent, y + k * pitch, length, thickness, ink)
            last = y + k * pitch + thickness
        y = last + pitch - thickness + f.unit
    return last - f.y


def _table(rng: np.random.Generator, pen: _Pen, f: _Frame) -> int:
    rows, columns, row_height = int(rng.integers(3, 7)), int(rng.integers(2, 5)), 6 * f.unit
    width = round(rng.uniform(0.7, 1.0) * f.width)
    height = rows * row_height + 1
    rule, ink = _grey(rng, 40, 90), _grey(rng, 90, 150)
    cell = width // columns
    for r in range(rows):
        for c in range(columns):
            length = round(rng.uniform(0.3, 0.8) * (cell - 3 * f.unit))
            pen.bar(
                f.x + c * cell + 2 * f.unit,
                f.y + r * row_height + 2 * f.unit,
                length,
                2 * f.unit,
                ink,
            )
    for r in range(rows + 1):
        pen.bar(f.x, f.y + r * row_height, columns * cell + 1, 1, rule)
    for c in range(columns + 1):
        pen.bar(f.x + c * cell, f.y, 1, height, rule)
    return height


def _figure(rng: np.random.Generator, pen: _Pen, f: _Frame) -> int:
    width = round(rng.uniform(0.5, 1.0) * f.width)
    height = min(f.room, max(8 * f.unit, round(rng.uniform(0.4, 0.9) * width)))
    picture, _ = paint_background(rng, width, height)
    for _ in range(int(rng.integers(1, 3))):
        side = int(rng.integers(4, max(5, min(width, height) // 2 + 1)))
        mask = rasterise_shape(SHAPES[int(rng.integers(len(SHAPES)))], side)
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        picture[y : y + side, x : x + side][mask] = COLOURS[
            COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        ]
    pen.canvas.paste(Image.fromarray(picture), (f.x, f.y))
    pen.mark(f.x, f.y, f.x + width - 1, f.y + height - 1)
    return height


_BLOCKS: dict[str, tuple[Callable[..., int], float, int]] = {
    # category: (drawer, weight, the most height in layout units it can need)
    "text": (_text, 0.45, 30),
    "title": (_heading, 0.1, 3),
    "list": (_list, 0.15, 42),
    "table": (_table, 0.15, 37),
}


def _fill_column(
    rng: np.random.Generator, page: Image.Image, f: _Frame, blocks: list[LayoutBlock]
) -> None:
    """Stack blocks down a column until it is full; figures take at most what is left."""
    kinds = [*_BLOCKS, "figure"]
    weights = np.array([w for _, w, _ in _BLOCKS.values()] + [0.15])
    while f.room >= 6 * f.unit:
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        pen = _Pen(page)
        if kind == "figure" and f.room >= 8 * f.unit:
            used = _figure(rng, pen, f)
        elif kind in _BLOCKS and _BLOCKS[kind][2] * f.unit <= f.room:
            used = _BLOCKS[kind][0](rng, pen, f)
        else:
            kind = "text"
            used = _text(rng, pen, f, lines=min(7, (f.room - 2 * f.unit) // (4 * f.unit) + 1))
        blocks.append(LayoutBlock(kind, pen.box()))
        gap = int(rng.integers(4, 7)) * f.unit
        f.y += used + gap
        f.room -= used + gap


def make_page(rng: np.random.Generator, width: int = 96, height: int = 128) -> Page:
    """One page: a title, then one or two columns of blocks."""
    if min(width, height) < MIN_PAGE_SIZE:
        raise ValueError(f"Pages need at least {MIN_PAGE_SIZE} pixels a side, got {width}x{height}")
    unit = max(1, round(width / 96))
    paper = tuple(int(v) for v in rng.integers(240, 253, size=3))  # never a named colour
    page = Image.new("RGB", (width, height), paper)
    margin = round(0.08 * width)
    inner = width - 2 * margin
    pen = _Pen(page)
    ink, y, centred = _grey(rng, 30, 80), margin, rng.random() < 0.5
    for _ in range(int(rng.integers(1, 3))):
        length = round(rng.uniform(0.5, 0.9) * inner)
        left = margin + (inner - length) // 2 if centred else margin
        pen.bar(left, y, length, 4 * unit, ink)
        y += 6 * unit
    blocks = [LayoutBlock("title", pen.box())]
    top = y - 2 * unit + int(rng.integers(4, 8)) * unit
    columns = 1 if rng.random() < 0.5 else 2
    gutter = 6 * unit
    column_width = (inner - (columns - 1) * gutter) // columns
    for c in range(columns):
        frame = _Frame(
            margin + c * (column_width + gutter), top, column_width, height - margin - top, unit
        )
        _fill_column(rng, page, frame, blocks)
    return Page(np.asarray(page).copy(), tuple(blocks), paper)
