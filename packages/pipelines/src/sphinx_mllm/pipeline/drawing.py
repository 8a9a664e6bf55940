"""Draw the boxes a grounded answer names (`<p>the cat</p> [0.10,0.20,0.50,0.60]`) onto the
image the answer is about, in that image's pixels.

Answers write boxes normalised in their style's frame (SPHINX: the image padded to a square);
`find_boxes` maps them back to the original image, `draw_boxes` draws them with their phrases.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from sphinx_mllm.data.boxes import (
    Box,
    Frame,
    StyleLike,
    denormalize_box,
    get_box_style,
    parse_boxes,
)

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


@dataclass(frozen=True)
class PixelBox:
    """One box of an answer in pixels `(x1, y1, x2, y2)` of the original image, clipped to it,
    with the phrase written before it (None when there is none)."""

    phrase: str | None
    box: Box


def find_boxes(
    answer_text: str,
    image_size: tuple[int, int],
    style: StyleLike = "sphinx",
    *,
    frame: Frame | None = None,
) -> list[PixelBox]:
    """Every box of `answer_text` in pixels of an image of (width, height) `image_size`; `frame`
    defaults to the style's own (padded square for SPHINX)."""
    spec = get_box_style(style)
    frame = frame or spec.default_frame
    width, height = image_size
    found = []
    for group in parse_boxes(answer_text, spec):
        for normalised in group.boxes:
            x1, y1, x2, y2 = denormalize_box(normalised, image_size, frame)
            left, right = sorted((_clip(x1, width), _clip(x2, width)))
            top, bottom = sorted((_clip(y1, height), _clip(y2, height)))
            found.append(PixelBox(group.phrase, (left, top, right, bottom)))
    return found


def draw_boxes(
    image: Image.Image,
    answer_text: str,
    style: StyleLike = "sphinx",
    *,
    frame: Frame | None = None,
) -> Image.Image:
    """An RGB copy of `image` with the boxes of `answer_text` drawn as rectangles, each labelled
    with its phrase; `find_boxes` gives the boxes themselves (and how many there are)."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    line_width = max(2, min(canvas.size) // 150)
    font = ImageFont.load_default()
    for index, found in enumerate(find_boxes(answer_text, canvas.size, style, frame=frame)):
        colour = PALETTE[index % len(PALETTE)]
        left, top, right, bottom = (round(value) for value in found.box)
        draw.rectangle((left, top, right, bottom), outline=colour, width=line_width)
        if found.phrase:
            _label(draw, font, found.phrase, (left, top), colour)
    return canvas


def _clip(value: float, side: int) -> float:
    return min(max(value, 0.0), side - 1.0)


def _label(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    text: str,
    corner: tuple[int, int],
    colour: tuple[int, int, int],
) -> None:
    """The phrase on a filled tag just above the box's top-left corner (inside it at the top of
    the image)."""
    left, top = corner
    x1, y1, x2, y2 = draw.textbbox((0, 0), text, font=font)
    tag_height = y2 - y1 + 4
    tag_top = top - tag_height if top >= tag_height else top
    draw.rectangle((left, tag_top, left + x2 - x1 + 4, tag_top + tag_height), fill=colour)
    draw.text((left + 2 - x1, tag_top + 2 - y1), text, fill=(255, 255, 255), font=font)
