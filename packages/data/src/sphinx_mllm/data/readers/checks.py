"""The checks every reader applies to the fields of a record, so one rule holds for all formats:
ids are integers (or, where the format says so, non-empty strings), numbers are finite and never
booleans, texts are strings, image sizes are whole pixels between 1 and `MAX_IMAGE_SIDE`, a box
has a positive width and height and lies inside its image (`BOX_TOLERANCE` pixels of rounding
allowed), and an image name is a relative path under the image root (`image_paths`).

Each check returns the value it checked or raises `RecordProblem`, whose message is the reason
the reader reports (`Problems.attempt`) with the place of the record.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from sphinx_mllm.data.image_paths import ImagePathError, check_image_name

MAX_IMAGE_SIDE = 100_000  # pixels; the largest images of the public sets are about 20,000 wide
BOX_TOLERANCE = 1.0  # pixels a box may extend past its image (rounding in the public files)


class RecordProblem(ValueError):
    """Why one record cannot be used; the reader adds where the record is."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 40


def shown(value: Any) -> str:
    """A short repr of a value for an error message (bounded length and depth, whatever the
    value: a record may hold a list nested hundreds deep)."""
    return _SHORT.repr(value)


def record_fields(record: Any, keys: Iterable[str]) -> Mapping[str, Any]:
    """`record` when it is an object holding every key of `keys`."""
    if not isinstance(record, dict):
        raise RecordProblem(f"not an object but {type(record).__name__}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise RecordProblem(f"missing keys {missing}")
    return record


def integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordProblem(f"{name} is not an integer: {shown(value)}")
    return value


def identifier(value: Any, name: str) -> int | str:
    """An id that the format writes as an integer or a string (question ids, image ids)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise RecordProblem(f"{name} is not an integer or a non-empty string: {shown(value)}")


def number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordProblem(f"{name} is not a number: {shown(value)}")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise RecordProblem(f"{name} is not a finite number: {shown(value)}")
    return result


def text(value: Any, name: str) -> str:
    """A string with something in it besides whitespace."""
    if not isinstance(value, str) or not value.strip():
        raise RecordProblem(f"{name} is not a non-empty string: {shown(value)}")
    return value


def texts(value: Any, name: str) -> tuple[str, ...]:
    """A list of strings (each may be empty; the task builders drop empty ones, counted)."""
    if not isinstance(value, list | tuple):
        raise RecordProblem(f"{name} is not a list but {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordProblem(f"{name}[{index}] is not a string: {shown(item)}")
    return tuple(value)


def image_size(width: Any, height: Any) -> tuple[int, int]:
    """(width, height) in whole pixels, each between 1 and `MAX_IMAGE_SIDE`."""
    size = []
    for name, value in (("width", width), ("height", height)):
        side = number(value, name)
        if not side.is_integer() or not 1 <= side <= MAX_IMAGE_SIDE:
            raise RecordProblem(
                f"{name} {shown(value)} is not a whole number of pixels in [1, {MAX_IMAGE_SIDE}]"
            )
        size.append(int(side))
    return size[0], size[1]


def box(
    values: Any,
    image_size: Sequence[int] | None,
    layout: Literal["xywh", "xyxy"],
    name: str = "box",
) -> tuple[float, float, float, float]:
    """A box of 4 finite numbers, as written (`layout`), with a positive width and height, inside
    its image give or take `BOX_TOLERANCE` (without a size: inside `MAX_IMAGE_SIDE` square);
    returned as given."""
    if not isinstance(values, list | tuple) or len(values) != 4:
        raise RecordProblem(f"{name} is not 4 numbers: {shown(values)}")
    written = list(values)
    a, b, c, d = values
    plain = (int, float)  # exact types: a bool is not a number (this runs on every box read)
    if type(a) in plain and type(b) in plain and type(c) in plain and type(d) in plain:
        try:
            a, b, c, d = float(a), float(b), float(c), float(d)
        except OverflowError:  # an integer past float's range
            a = math.inf
        if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c) and math.isfinite(d)):
            a, b, c, d = (number(v, name) for v in values)  # raises, naming the value
    elif any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise RecordProblem(f"{name} is not 4 numbers: {shown(written)}")
    else:  # subclasses of int and float, e.g. numpy's float64
        a, b, c, d = (number(v, name) for v in values)
    x1, y1, x2, y2 = (a, b, a + c, b + d) if layout == "xywh" else (a, b, c, d)
    if not (x2 > x1 and y2 > y1):
        raise RecordProblem(
            f"{name} {written} has no area (width {x2 - x1:g}, height {y2 - y1:g}, {layout})"
        )
    width, height = image_size or (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
    if (
        x1 < -BOX_TOLERANCE
        or y1 < -BOX_TOLERANCE
        or x2 > width + BOX_TOLERANCE
        or y2 > height + BOX_TOLERANCE
    ):
        frame = f"its {width}x{height} image" if image_size else "any image (negative or huge)"
        raise RecordProblem(f"{name} {written} is outside {frame}")
    return a, b, c, d


def image_name(name: Any, allow_outside: bool) -> str:
    """A relative image path that stays under the image root (see `image_paths`)."""
    # The plain case first, decided from the characters alone: without '..', ':' (a drive), a
    # NUL or a leading separator no name can leave its root or be absolute, so `image_paths`
    # would accept it too. Parsing the name as a POSIX and a Windows path took a quarter of the
    # time of indexing a 200,000-record LLaVA file.
    if (
        type(name) is str
        and ".." not in name
        and ":" not in name
        and "\0" not in name
        and not name.startswith(("/", "\\"))
        and name.strip()
    ):
        return name
    try:
        return check_image_name(name, allow_outside=allow_outside)
    except ImagePathError as error:
        raise RecordProblem(str(error)) from error


def image_pattern(pattern: str, option: str = "image pattern") -> str:
    """A file-name pattern with `{image_id}` as its only field (e.g. COCO's
    `COCO_val2014_{image_id:012d}.jpg`); an unknown field is an error naming the pattern."""
    try:
        pattern.format(image_id=0)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{option} {pattern!r} cannot be filled ({type(error).__name__}: {error}); it may "
            "use the field {image_id} only, e.g. 'COCO_val2014_{image_id:012d}.jpg'"
        ) from error
    return pattern


def image_from_pattern(pattern: str, image_id: int, allow_outside: bool) -> str:
    """The image name `pattern` gives for an integer image id, checked."""
    return image_name(pattern.format(image_id=integer(image_id, "image_id")), allow_outside)
