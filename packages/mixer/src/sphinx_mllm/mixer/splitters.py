"""View splitters: one image -> view tensors `[V, 3, s, s]` in [0, 1] and their `ViewLayout`.

- `single`: one view, the padded square resized to the base side (SPHINX at 224, SPHINX-Tiny at
  512).
- `global_grid`: the padded square resized to k * base; the global view is that canvas
  downsampled (bicubic, as SPHINX interpolates its tensor) to the base side, then the k x k tiles
  in raster order (SPHINX-1k: 448 with k = 2; SPHINX-2k: 672 with k = 3).
- `anyres` (in `anyres.py`): the tile grid chosen from candidate resolutions by aspect ratio.

Feeding each encoder at its own size (SPHINX-Tiny: ConvNeXt at 512, DINOv2 at 224; SPHINX:
ConvNeXt at 256 from the 224 view) is not a splitter: it is the `image_size` of each stream of
the visual stack, because every encoder sees the same views, each at its own resolution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from PIL import Image

from sphinx_mllm.encoders.transforms import pil_to_tensor
from sphinx_mllm.mixer.resizing import resize_views
from sphinx_mllm.mixer.views import (
    OPENAI_CLIP_FILL,
    View,
    ViewLayout,
    pad_box,
    padded_resize,
)


class ViewSplitter(ABC):
    """Turns an image into views of side `base_size`; view 0 is the global view, downsampled
    in float16 when `half_precision_resize` (as SPHINX's released code does, see `resizing`)."""

    def __init__(
        self,
        base_size: int,
        fill: tuple[int, int, int] = OPENAI_CLIP_FILL,
        half_precision_resize: bool = False,
    ) -> None:
        if not isinstance(base_size, int) or base_size < 1:
            raise ValueError(
                f"{type(self).__name__}: base_size must be a positive int, got {base_size!r}"
            )
        self.base_size = base_size
        self.fill = tuple(fill)
        self.half_precision_resize = bool(half_precision_resize)

    @abstractmethod
    def canvas_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of the canvas an image of `image_size` (width, height) is resized to."""

    @property
    def fixed_views(self) -> int | None:
        """The number of views when it does not depend on the image, else None."""
        return None

    def layout(self, image_size: tuple[int, int]) -> ViewLayout:
        """The views of an image of `image_size` = (width, height), without any pixels."""
        width, height = image_size
        canvas_w, canvas_h = self.canvas_size(image_size)
        padded_w, padded_h, offset_x, offset_y = pad_box(width, height, canvas_w / canvas_h)
        scale_x, scale_y = canvas_w / padded_w, canvas_h / padded_h
        content = (
            offset_x * scale_x,
            offset_y * scale_y,
            (offset_x + width) * scale_x,
            (offset_y + height) * scale_y,
        )
        views = [View(0, "global", (0.0, 0.0, float(canvas_w), float(canvas_h)))]
        if (canvas_w, canvas_h) != (self.base_size, self.base_size):
            side = self.base_size
            for row in range(canvas_h // side):
                for col in range(canvas_w // side):
                    box = (
                        float(col * side),
                        float(row * side),
                        float((col + 1) * side),
                        float((row + 1) * side),
                    )
                    views.append(View(len(views), "tile", box, row, col))
        return ViewLayout(
            (width, height), (canvas_w, canvas_h), content, self.base_size, tuple(views)
        )

    def num_views(self, image_size: tuple[int, int]) -> int:
        return self.layout(image_size).num_views

    def split(self, image: Image.Image) -> tuple[torch.Tensor, ViewLayout]:
        """Views `[V, 3, base, base]` in [0, 1] and their layout."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"{type(self).__name__} splits a PIL image, got {type(image).__name__}")
        layout = self.layout(image.size)
        canvas = pil_to_tensor(padded_resize(image, layout.canvas_size, self.fill))
        return self.split_canvas(canvas, layout, image), layout

    def split_canvas(
        self, canvas: torch.Tensor, layout: ViewLayout, image: Image.Image | None = None
    ) -> torch.Tensor:
        """Views of a canvas tensor `[3, H, W]` of the layout's canvas size."""
        expected = (layout.canvas_size[1], layout.canvas_size[0])
        if tuple(canvas.shape[-2:]) != expected:
            raise ValueError(
                f"{type(self).__name__}: the canvas is {canvas.shape[-1]}x{canvas.shape[-2]} but "
                f"its views need {expected[1]}x{expected[0]}; padded_resize the image first"
            )
        side = self.base_size
        views = [self._global_view(canvas, image)]
        for view in layout.views[1:]:
            x0, y0 = int(view.box[0]), int(view.box[1])
            views.append(canvas[:, y0 : y0 + side, x0 : x0 + side])
        return torch.stack(views)

    def _global_view(self, canvas: torch.Tensor, image: Image.Image | None) -> torch.Tensor:
        """The whole canvas at the base side: as is, or downsampled (bicubic) as SPHINX does."""
        side = self.base_size
        if tuple(canvas.shape[-2:]) == (side, side):
            return canvas
        resized = resize_views(
            canvas.unsqueeze(0), (side, side), "bicubic", half_precision=self.half_precision_resize
        )
        return resized[0]


class SingleView(ViewSplitter):
    """One view: the padded square at the base side."""

    def canvas_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.base_size, self.base_size

    @property
    def fixed_views(self) -> int:
        return 1


class GlobalGrid(ViewSplitter):
    """A global view plus a k x k grid of tiles of the padded square at k * base."""

    def __init__(
        self,
        base_size: int,
        grid: int,
        fill: tuple[int, int, int] = OPENAI_CLIP_FILL,
        half_precision_resize: bool = False,
    ) -> None:
        super().__init__(base_size, fill, half_precision_resize)
        if not isinstance(grid, int) or grid < 2:
            raise ValueError(
                f"GlobalGrid: grid must be an int >= 2 (use 'single' for one view), got {grid!r}"
            )
        self.grid = grid

    def canvas_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        side = self.base_size * self.grid
        return side, side

    @property
    def fixed_views(self) -> int:
        return 1 + self.grid * self.grid


# -- registered factories (entry-point group sphinx_mllm_view_splitters) --------------------------


def single(base_size: int = 224, fill: tuple[int, int, int] = OPENAI_CLIP_FILL) -> SingleView:
    """One view: the image padded to a square and resized to base_size (SPHINX at 224)."""
    return SingleView(base_size, fill)


def global_grid(
    base_size: int = 224,
    grid: int = 2,
    fill: tuple[int, int, int] = OPENAI_CLIP_FILL,
    half_precision_resize: bool = False,
) -> GlobalGrid:
    """A global view plus grid x grid tiles of base_size (SPHINX-1k: 224, 2; SPHINX-2k: 224, 3);
    `half_precision_resize` downsamples the global view in float16, as SPHINX's code does."""
    return GlobalGrid(base_size, grid, fill, half_precision_resize)
