"""Exact pixel boxes: an object is rasterised into its own mask, and its box is the tight box of
the mask, so annotations describe the pixels actually drawn (no anti-aliasing anywhere)."""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # COCO x, y, width, height in pixels, top-left origin


def tight_box(mask: np.ndarray) -> Box:
    """The smallest box holding every True pixel of `mask` (which must have one).

    A box (x, y, w, h) covers pixel columns x .. x + w - 1 and rows y .. y + h - 1.
    """
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        raise ValueError(f"An empty {mask.shape} mask has no box")
    rows = np.flatnonzero(mask.any(axis=1))
    x, y = int(columns[0]), int(rows[0])
    return x, y, int(columns[-1]) - x + 1, int(rows[-1]) - y + 1


def box_polygon(box: Box) -> list[float]:
    """The outline of a box as a COCO polygon (x1, y1, x2, y2, ...), in continuous coordinates."""
    x, y, w, h = box
    return [float(v) for v in (x, y, x + w, y, x + w, y + h, x, y + h)]
