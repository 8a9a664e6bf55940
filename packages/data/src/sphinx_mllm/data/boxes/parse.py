"""Read boxes and points back from text (model answers, training targets), tolerantly.

Tolerated: any whitespace around separators and brackets (LLaVA's ", "), any number of decimals
(SPHINX writes 2, Shikra 3, LLaVA 1 or 2), bare integers, and in integer styles the levels
(Qwen-VL's 0..999, MiniGPT-v2's 0..100), returned divided by the style's scale. Values come back
as written: not clamped, not checked against [0, 1].

`parse_boxes` and `parse_points` never raise on any text: what is not a well-formed coordinate
group is prose. `parse_first_bracket` raises `BoxParseError` (and nothing else) when the first
bracket holds something other than numbers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from sphinx_mllm.data.boxes.geometry import Box, Point
from sphinx_mllm.data.boxes.records import GroundedBoxes, GroundedPoints
from sphinx_mllm.data.boxes.styles import BoxStyle, StyleLike, get_box_style

_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"


class BoxParseError(ValueError):
    """A bracket that should hold coordinates holds something else; the message quotes it."""


def parse_boxes(text: str, style: StyleLike = "sphinx") -> list[GroundedBoxes]:
    """Every box group in `text`, in order, each with the phrase written just before it.

    ``"<p>person</p> [0.10,0.20,0.30,0.40;0.55,0.21,0.70,0.90] and [0.1, 0.2, 0.3, 0.4]"`` gives
    two records: ``("person", (box, box))`` and ``(None, (box,))``. Groups of points and groups
    mixing boxes and points are skipped. No box gives an empty list.
    """
    return [
        GroundedBoxes(phrase, tuple(_as_box(c) for c in coords), span)
        for phrase, coords, span in _groups(text, get_box_style(style))
        if all(len(c) == 4 for c in coords)
    ]


def parse_points(text: str, style: StyleLike = "sphinx") -> list[GroundedPoints]:
    """Every point group in `text` with its phrase: ``<p>nose</p> [0.41,0.30]`` -> ("nose", ...).

    Keypoint texts written by `format_keypoints` read back as one record per keypoint.
    """
    return [
        GroundedPoints(phrase, tuple(_as_point(c) for c in coords), span)
        for phrase, coords, span in _groups(text, get_box_style(style))
        if all(len(c) == 2 for c in coords)
    ]


def parse_first_bracket(text: str, style: StyleLike = "sphinx") -> tuple[float, ...] | None:
    """The numbers inside the first bracket of `text`, as SPHINX's REC evaluation reads them.

    The first ``[...]`` (the style's box bracket) counts whatever it holds; its numbers are
    returned flat, so ``[0.1,0.2,0.3,0.4;0.5,0.6,0.7,0.8]`` gives 8 numbers. No bracket gives
    None; a first bracket holding anything but numbers and separators raises `BoxParseError`.
    """
    spec = get_box_style(style)
    opening, closing = spec.box_open, spec.box_close
    # Two scans with str.find, each over the text at most once: linear in the text (a regular
    # expression `[(.*?)]` searched from every `[` was quadratic on text full of `[`).
    start = text.find(opening)
    end = text.find(closing, start + len(opening)) if start >= 0 else -1
    if end < 0:
        return None
    content = text[start + len(opening) : end]
    leftover = re.sub(_NUMBER, "", content)
    allowed = _patterns(spec).filler
    if not re.search(_NUMBER, content) or any(ch not in allowed for ch in leftover):
        raise BoxParseError(
            f"the first {spec.box_open}...{spec.box_close} at character {start} holds "
            f"{content[:80]!r}, not {spec.name} coordinates"
        )
    return tuple(spec.read(number) for number in re.findall(_NUMBER, content))


def _as_box(values: tuple[float, ...]) -> Box:
    return (values[0], values[1], values[2], values[3])


def _as_point(values: tuple[float, ...]) -> Point:
    return (values[0], values[1])


def _groups(
    text: str, spec: BoxStyle
) -> Iterator[tuple[str | None, list[tuple[float, ...]], tuple[int, int]]]:
    """(phrase, coordinates of each item, span) for every well-formed coordinate group."""
    patterns = _patterns(spec)
    for match in patterns.group.finditer(text):
        items = patterns.item.findall(match.group("group"))
        coords = [tuple(spec.read(n) for n in re.findall(_NUMBER, item)) for item in items]
        phrase = match.groupdict().get("phrase")
        text_matched = match.group(0)
        start = match.start() + len(text_matched) - len(text_matched.lstrip())
        end = match.end() - (len(text_matched) - len(text_matched.rstrip()))
        yield (phrase.strip() if phrase is not None else None), coords, (start, end)


class _Patterns:
    """The compiled regular expressions of one style."""

    def __init__(self, spec: BoxStyle) -> None:
        number = _lit(spec.number_open) + _NUMBER + _lit(spec.number_close)
        pair = _lit(spec.pair_open) + number + _lit(spec.number_sep) + number
        pair += _lit(spec.pair_close)
        item = f"{pair}(?:{_lit(spec.pair_sep)}{pair})?"
        opened, closed, sep = _lit(spec.box_open), _lit(spec.box_close), _lit(spec.box_sep)
        if spec.shared_bracket:
            group = f"{opened}{item}(?:{sep}{item})*{closed}"
        else:
            group = f"{opened}{item}{closed}(?:{sep}{opened}{item}{closed})*"
        if spec.phrase_open and spec.phrase_close:
            po, pc = re.escape(spec.phrase_open), re.escape(spec.phrase_close)
            phrase = rf"(?:{po}(?P<phrase>(?:(?!{po}|{pc}).)*){pc})?"
        else:
            phrase = ""
        self.item = re.compile(_squeeze(item), re.DOTALL)
        self.group = re.compile(f"{phrase}(?P<group>{_squeeze(group)})", re.DOTALL)
        # What may sit between the numbers of one bracket; "," and ";" are always tolerated.
        inner_sep = spec.box_sep if spec.shared_bracket else ""
        separators = spec.number_open + spec.number_close + spec.number_sep + spec.pair_open
        separators += spec.pair_close + spec.pair_sep + inner_sep + ",; \t\r\n"
        self.filler = frozenset(separators)


@functools.cache
def _patterns(spec: BoxStyle) -> _Patterns:
    return _Patterns(spec)


def _lit(token: str) -> str:
    """A literal token with optional whitespace around it (an empty token is just whitespace)."""
    core = token.strip()
    return r"\s*" + re.escape(core) + r"\s*" if core else r"\s*"


def _squeeze(pattern: str) -> str:
    """Collapse runs of ``\\s*`` so that long blank stretches cannot cause heavy backtracking."""
    return re.sub(r"(?:\\s\*)+", lambda _: r"\s*", pattern)
