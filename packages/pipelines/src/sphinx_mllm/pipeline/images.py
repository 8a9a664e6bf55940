"""Opening the images a command or a data set names, with errors that name the file.

Every path that reads an image (training data, evaluation, generation, chat, encode) goes
through `open_image`, so a missing, truncated or non-image file is reported the same way, and
`check_image` lets data loading find a bad image before training starts rather than hours in.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

# what Pillow raises for data that is no image or is truncated or corrupt
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


class ImageFileError(ValueError):
    """An image file that is missing or cannot be decoded."""


def open_image(path: str | Path) -> Image.Image:
    """The image at `path`, decoded and converted to RGB."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ImageFileError(f"image {path} {what}")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except DECODE_ERRORS as error:
        raise ImageFileError(f"cannot read {path} as an image: {error}") from error


def check_image(path: str | Path) -> tuple[int, int]:
    """Decode the image at `path` completely (a truncated file fails only when its pixels are
    read); returns its size."""
    return open_image(path).size
