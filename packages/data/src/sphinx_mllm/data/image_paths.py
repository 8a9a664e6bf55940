"""Where a record's image lives: a relative path under the data set's image root.

Annotation files come from anywhere; an image name such as `../../../etc/passwd` or `/home/x/y`
would let a record read (and a training run embed, or a server show) a file outside the data
set. Such names are refused by default; `allow_outside=True` is the explicit opt-out for data
sets that really do use absolute paths.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


class ImagePathError(ValueError):
    """An image name that is not a relative path inside the image root."""


def check_image_name(name: object, *, allow_outside: bool = False) -> str:
    """`name` itself when it is a non-empty relative path that stays under its root (no `..`
    part, not absolute, no drive, no NUL); otherwise `ImagePathError` naming it."""
    if not isinstance(name, str) or not name.strip():
        raise ImagePathError(f"image {name!r} is not a file name")
    if "\0" in name:
        raise ImagePathError(f"image {name!r} contains a NUL character")
    if allow_outside:
        return name
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise ImagePathError(
            f"image {name!r} is an absolute path; image paths must be relative to the image root"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise ImagePathError(f"image {name!r} leaves the image root (it has a '..' part)")
    return name


def image_path_under(root: str | Path, name: object, *, allow_outside: bool = False) -> Path:
    """`root / name` for a checked `name` (see `check_image_name`); symbolic links inside the
    root are the data set's own choice and are followed."""
    return Path(root) / check_image_name(name, allow_outside=allow_outside)
