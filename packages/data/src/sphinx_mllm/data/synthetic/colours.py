"""The named colours objects are drawn in, and the range backgrounds are drawn from.

Every background pixel (plain, gradient or noisy) stays inside `BACKGROUND_RANGE` per channel,
and every named colour has a channel at least `MIN_CHANNEL_GAP` outside that range, so a pixel
of an object's exact colour is never background: boxes and answers can be checked on the pixels.
"""

from __future__ import annotations

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

BACKGROUND_RANGE = (85, 210)  # inclusive, per channel, noise included
MIN_CHANNEL_GAP = 40


def _far_from_background(rgb: tuple[int, int, int]) -> bool:
    low, high = BACKGROUND_RANGE
    return any(c <= low - MIN_CHANNEL_GAP or c >= high + MIN_CHANNEL_GAP for c in rgb)


_too_close = [name for name, rgb in COLOURS.items() if not _far_from_background(rgb)]
if _too_close:  # a guard for whoever edits the palette, checked at import
    raise ValueError(f"Colours {_too_close} could be mistaken for background pixels")


def contrasting(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `rgb` (for eyes drawn on a head)."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return COLOURS["black"] if luminance > 128 else COLOURS["white"]
