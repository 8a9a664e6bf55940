"""Aspect-ratio aware tiling in the manner of LLaVA-NeXT ("anyres").

The tile grid is chosen among candidate resolutions (multiples of the base side) by LLaVA-NeXT's
rule: the largest effective resolution (the image's pixels that survive the fit, never more than
it has), then the least wasted canvas. The image is padded (centred, mean colour) to the chosen
aspect and resized to it; the tiles are read in raster order. The global view comes first: the
image padded to a square at the base side, so it is not distorted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from sphinx_mllm.encoders.transforms import pil_to_tensor
from sphinx_mllm.mixer.splitters import ViewSplitter
from sphinx_mllm.mixer.views import (
    OPENAI_CLIP_FILL,
    View,
    ViewLayout,
    padded_resize,
)

# (rows, cols) of LLaVA-NeXT's image_grid_pinpoints for a 336 base: 336x672, 672x336, 672x672,
# 1008x336, 336x1008.
LLAVA_NEXT_GRIDS = ((2, 1), (1, 2), (2, 2), (1, 3), (3, 1))


def select_best_resolution(
    image_size: tuple[int, int], resolutions: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """The (width, height) among `resolutions` that keeps the most of the image's pixels, the
    smallest canvas among equals (the first candidate on a complete tie)."""
    width, height = image_size
    best, best_effective, best_wasted = None, -1, float("inf")
    for candidate_w, candidate_h in resolutions:
        scale = min(candidate_w / width, candidate_h / height)
        fitted_w, fitted_h = int(width * scale), int(height * scale)
        effective = min(fitted_w * fitted_h, width * height)
        wasted = candidate_w * candidate_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (candidate_w, candidate_h), effective, wasted
    return best


class AnyRes(ViewSplitter):
    """A global view plus the tiles of the best-fitting candidate grid."""

    def __init__(
        self,
        base_size: int,
        grids: Sequence[tuple[int, int]] = LLAVA_NEXT_GRIDS,
        fill: tuple[int, int, int] = OPENAI_CLIP_FILL,
    ) -> None:
        super().__init__(base_size, fill)
        grids = [tuple(grid) for grid in grids]
        if not grids or any(len(grid) != 2 or min(grid) < 1 for grid in grids):
            raise ValueError(
                f"AnyRes: grids must be (rows, cols) pairs of positive ints, got {grids}"
            )
        self.grids = grids
        self.resolutions = [(cols * base_size, rows * base_size) for rows, cols in grids]

    def canvas_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return select_best_resolution(image_size, self.resolutions)

    def layout(self, image_size: tuple[int, int]) -> ViewLayout:
        layout = super().layout(image_size)
        canvas_w, canvas_h = layout.canvas_size
        side = max(canvas_w, canvas_h)  # the global view is the square around the canvas
        square = (
            (canvas_w - side) / 2,
            (canvas_h - side) / 2,
            (canvas_w + side) / 2,
            (canvas_h + side) / 2,
        )
        views = (View(0, "global", square), *layout.views[1:])
        return ViewLayout(
            layout.image_size, layout.canvas_size, layout.content_box, layout.view_size, views
        )

    def _global_view(self, canvas: torch.Tensor, image: Image.Image | None) -> torch.Tensor:
        if image is None:
            raise ValueError("AnyRes needs the image itself for its global view (a padded square)")
        return pil_to_tensor(padded_resize(image, self.base_size, self.fill))


def anyres(
    base_size: int = 336,
    grids: Sequence[tuple[int, int]] = LLAVA_NEXT_GRIDS,
    fill: tuple[int, int, int] = OPENAI_CLIP_FILL,
) -> AnyRes:
    """LLaVA-NeXT-style tiling: a global view plus the best-fitting (rows, cols) grid of tiles."""
    return AnyRes(base_size, grids, fill)
