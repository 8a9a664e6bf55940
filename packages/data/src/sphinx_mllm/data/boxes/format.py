"""Write normalised boxes and points as text in a named style (see `styles.py`).

All functions take coordinates already normalised to [0, 1] (`normalize_box` turns pixels into
those) and a style name or `BoxStyle`, SPHINX's by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sphinx_mllm.data.boxes.records import GroundedBoxes, GroundedPoints
from sphinx_mllm.data.boxes.styles import StyleLike, get_box_style


def format_box(box: Sequence[float], style: StyleLike = "sphinx") -> str:
    """One box: ``[0.10,0.20,0.30,0.40]`` in SPHINX's style."""
    return format_boxes([box], style)


def format_boxes(boxes: Sequence[Sequence[float]], style: StyleLike = "sphinx") -> str:
    """Several boxes of one phrase: ``[0.10,0.20,0.30,0.40;0.55,0.21,0.70,0.90]`` in SPHINX's."""
    return _group([_coordinates(box, 4, style) for box in boxes], style)


def format_point(point: Sequence[float], style: StyleLike = "sphinx") -> str:
    """One point: ``[0.41,0.30]`` in SPHINX's style."""
    return format_points([point], style)


def format_points(points: Sequence[Sequence[float]], style: StyleLike = "sphinx") -> str:
    """Several points sharing one bracket (or joined brackets), like `format_boxes`."""
    return _group([_coordinates(point, 2, style) for point in points], style)


def format_phrase(
    phrase: str, boxes: Sequence[Sequence[float]], style: StyleLike = "sphinx"
) -> str:
    """A phrase with its boxes: ``<p>person</p> [0.10,0.20,0.30,0.40]`` in SPHINX's style."""
    return _phrase(phrase, style) + format_boxes(boxes, style)


def format_phrase_points(
    phrase: str, points: Sequence[Sequence[float]], style: StyleLike = "sphinx"
) -> str:
    """A phrase with its points: ``<p>left shoulder</p> [0.41,0.30]`` in SPHINX's style."""
    return _phrase(phrase, style) + format_points(points, style)


def format_keypoints(
    named_points: Iterable[tuple[str, Sequence[float]]],
    style: StyleLike = "sphinx",
    sep: str = " ",
) -> str:
    """Named points (from `coco_keypoints`) as ``<p>nose</p> [0.50,0.20] <p>left eye</p> ...``."""
    return sep.join(format_phrase_points(name, [point], style) for name, point in named_points)


def format_grounded_text(
    parts: Iterable[str | GroundedBoxes | GroundedPoints], style: StyleLike = "sphinx"
) -> str:
    """Plain strings and grounded phrases joined into one text, e.g. a grounded caption.

    ``["A ", GroundedBoxes("man", (box,)), " rides a ", GroundedBoxes("horse", (box,)), "."]``
    gives ``A <p>man</p> [..] rides a <p>horse</p> [..].``; a record with no phrase writes only
    its bracket.
    """
    pieces = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, GroundedBoxes):
            text = format_boxes(part.boxes, style)
            pieces.append(text if part.phrase is None else _phrase(part.phrase, style) + text)
        elif isinstance(part, GroundedPoints):
            text = format_points(part.points, style)
            pieces.append(text if part.phrase is None else _phrase(part.phrase, style) + text)
        else:
            raise TypeError(
                "a grounded-text part must be str, GroundedBoxes or GroundedPoints; "
                f"got {type(part).__name__}: {part!r}"
            )
    return "".join(pieces)


def _coordinates(values: Sequence[float], count: int, style: StyleLike) -> str:
    spec = get_box_style(style)
    if len(values) != count:
        kind = "box" if count == 4 else "point"
        raise ValueError(f"a {kind} needs {count} numbers; got {tuple(values)!r}")
    pairs = [
        spec.pair_open
        + spec.number_sep.join(
            spec.number_open + spec.write(value) + spec.number_close for value in values[i : i + 2]
        )
        + spec.pair_close
        for i in range(0, count, 2)
    ]
    return spec.pair_sep.join(pairs)


def _group(items: list[str], style: StyleLike) -> str:
    spec = get_box_style(style)
    if not items:
        raise ValueError("a coordinate group needs at least one box or point; got none")
    if spec.shared_bracket:
        return spec.box_open + spec.box_sep.join(items) + spec.box_close
    return spec.box_sep.join(spec.box_open + item + spec.box_close for item in items)


def _phrase(phrase: str, style: StyleLike) -> str:
    spec = get_box_style(style)
    markers = [m for m in (spec.phrase_open, spec.phrase_close, spec.box_open) if m]
    if any(marker in phrase for marker in markers):
        raise ValueError(f"phrase {phrase!r} contains one of the {spec.name} markers {markers}")
    return spec.phrase_open + phrase + spec.phrase_close + spec.phrase_gap
