"""Image views and their layout: `padded_resize`, and the record of where each view lies.

SPHINX pads every image to a centred square filled with the CLIP mean colour, then resizes it
(bicubic) to the model's input side: the canvas. Views are regions of the canvas (the whole of it
for a global view, a tile for a sub-image). The layout keeps the geometry (canvas size, where the
image lies in it, each view's box) so views can be drawn on the original image or mapped back.
The padding offset is `(S - side) // 2` on the short axis, the frame the box text codec uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
ViewKind = Literal["global", "tile"]
OPENAI_CLIP_FILL = (122, 116, 104)  # int(255 * OpenAI-CLIP mean), the pad colour of SPHINX/LLaVA


def fill_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The 8-bit pad colour of a normalisation mean, truncated as LLaVA and SPHINX do."""
    return tuple(int(255 * channel) for channel in mean)


def pad_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """(padded_width, padded_height, offset_x, offset_y) to centre a width x height image in the
    smallest canvas of aspect `aspect` (width / height) that holds it."""
    if width <= 0 or height <= 0:
        raise ValueError(f"An image to pad must have a positive size, got {width}x{height}")
    if width / height < aspect:
        padded_width, padded_height = max(width, round(height * aspect)), height
    else:
        padded_width, padded_height = width, max(height, round(width / aspect))
    return padded_width, padded_height, (padded_width - width) // 2, (padded_height - height) // 2


def padded_resize(
    image: Image.Image, size: int | tuple[int, int], fill: tuple[int, int, int] = OPENAI_CLIP_FILL
) -> Image.Image:
    """Pad `image` with `fill` to a centred canvas of the target aspect, then resize it (bicubic)
    to `size` (an int for a square side, or (width, height))."""
    width, height = (size, size) if isinstance(size, int) else size
    padded_width, padded_height, offset_x, offset_y = pad_box(
        image.width, image.height, width / height
    )
    canvas = Image.new("RGB", (padded_width, padded_height), fill)
    canvas.paste(image.convert("RGB"), (offset_x, offset_y))
    if canvas.size == (width, height):
        return canvas
    return canvas.resize((width, height), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class View:
    """One view: its kind, its box in canvas pixels, and its place in the tile grid."""

    index: int
    kind: ViewKind
    box: Box
    row: int | None = None
    col: int | None = None


@dataclass(frozen=True)
class ViewLayout:
    """Where an image's views lie: the image inside the canvas, and each view inside the canvas."""

    image_size: tuple[int, int]  # (width, height) of the original image
    canvas_size: tuple[int, int]  # (width, height) of the padded, resized canvas
    content_box: Box  # where the original image lies in the canvas
    view_size: int  # the side of every view tensor
    views: tuple[View, ...]

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def kinds(self) -> list[ViewKind]:
        return [view.kind for view in self.views]

    def canvas_to_image(self, box: Box) -> Box:
        """A box in canvas pixels -> the same region in original-image pixels (may extend into
        the padding, i.e. outside the image)."""
        x0, y0, x1, y1 = self.content_box
        scale_x = self.image_size[0] / (x1 - x0)
        scale_y = self.image_size[1] / (y1 - y0)
        return (
            (box[0] - x0) * scale_x,
            (box[1] - y0) * scale_y,
            (box[2] - x0) * scale_x,
            (box[3] - y0) * scale_y,
        )

    def image_to_canvas(self, box: Box) -> Box:
        """A box in original-image pixels -> canvas pixels."""
        x0, y0, x1, y1 = self.content_box
        scale_x = (x1 - x0) / self.image_size[0]
        scale_y = (y1 - y0) / self.image_size[1]
        return (
            x0 + box[0] * scale_x,
            y0 + box[1] * scale_y,
            x0 + box[2] * scale_x,
            y0 + box[3] * scale_y,
        )

    def draw(self, image: Image.Image, width: int = 3) -> Image.Image:
        """A copy of the original image with the tiles' outlines drawn on it."""
        if image.size != self.image_size:
            raise ValueError(f"The layout is for a {self.image_size} image, got {image.size}")
        drawn = image.convert("RGB")
        pen = ImageDraw.Draw(drawn)
        for view in self.views:
            if view.kind == "tile":
                x0, y0, x1, y1 = self.canvas_to_image(view.box)
                pen.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 0, 0), width=width)
        return drawn
