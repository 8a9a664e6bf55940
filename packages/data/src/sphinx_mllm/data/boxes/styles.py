"""The box text styles of SPHINX and its neighbours, as data: one frozen record per style.

Every style is read and written by the same code (`format.py`, `parse.py`); a style only says
how a normalised value in [0, 1] becomes an integer level (its quantisation) and which literal
strings surround numbers, coordinate pairs, boxes and phrases.

| style | one box | several boxes | phrase | default frame |
|---|---|---|---|---|
| sphinx | `[0.10,0.20,0.30,0.40]` | `[a;b]` | `<p>man</p> [..]` | padded |
| llava | `[0.1, 0.2, 0.3, 0.4]` | `[a; b]` (ours) | `<p>man</p> [..]` (ours) | padded |
| shikra | `[0.100,0.200,0.300,0.400]` | `[a;b]` | `man[..]` | padded |
| qwen_vl | `<box>(100,200),(300,400)</box>` | one `<box>` each | `<ref>man</ref><box>` | per_axis |
| minigpt_v2 | `{<10><20><30><40>}` | `{a}<delim>{b}` | `<p>man</p> {..}` | per_axis |

Sources and choices:
- sphinx: LLaMA2-Accessory data and `eval_mm/evaluate.py` (two decimals always).
- llava: LLaVA-1.5 writes `round(v, 2)` joined by ", ". Its mix665k boxes are normalised to the
  image padded to a square (`--image_aspect_ratio pad`, haotian-liu/LLaVA#606), though users report
  that the RefCOCO part looks per-axis (#623, #822); we default to "padded" and leave the frame to
  the caller. LLaVA-1.5 has no multi-box or phrase convention: we borrow SPHINX's.
- shikra: `PlainBoxFormatter(precision=3)` with `;` between boxes and the `Expand2square`
  transform (shikras/shikra `config/_base_/model/shikra.py`); phrases carry no markup.
- qwen_vl: integers in [0, 1000), each box its own `<box>` after an optional `<ref>` (Qwen-VL
  tokenizer `_fetch_all_box_with_ref`); the image is resized, not padded. 1.0 is written 999.
- minigpt_v2: integers in [0, 100], boxes joined by `<delim>` (Vision-CAIR/MiniGPT-4
  `demo_v2.py`); the image is resized, not padded. MiniGPT-v2's data truncates with `int()`; we
  round, so a written box is within half a level of the true one.
- Qwen-VL and MiniGPT-v2 publish no point format; a point here is one coordinate pair inside
  their box brackets (`<box>(410,300)</box>`, `{<41><30>}`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Literal

from sphinx_mllm.data.boxes.geometry import Frame

NumberFormat = Literal["fixed", "shortest", "integer"]


@dataclass(frozen=True)
class BoxStyle:
    """How one model family writes boxes and points as text.

    A value ``v`` in [0, 1] is stored as the integer level ``round(v * scale)`` clamped to
    ``[0, max_level]`` and written per `number_format`: "fixed" (``level / scale`` with exactly
    ``log10(scale)`` decimals), "shortest" (Python's ``str(round(v, decimals))``, LLaVA) or
    "integer" (the level itself, Qwen-VL and MiniGPT-v2).
    """

    name: str
    scale: int
    max_level: int
    number_format: NumberFormat
    default_frame: Frame
    number_open: str = ""
    number_close: str = ""
    number_sep: str = ","
    pair_open: str = ""
    pair_close: str = ""
    pair_sep: str = ","
    box_open: str = "["
    box_close: str = "]"
    box_sep: str = ";"
    # True: several boxes share one bracket ("[a;b]"); False: each has its own ("{a}<delim>{b}").
    shared_bracket: bool = True
    phrase_open: str = "<p>"
    phrase_close: str = "</p>"
    phrase_gap: str = " "

    @property
    def quantum(self) -> float:
        """The distance between two consecutive writable values."""
        return 1.0 / self.scale

    @property
    def max_value(self) -> float:
        """The largest writable normalised value (0.999 for Qwen-VL, else 1.0)."""
        return self.max_level / self.scale

    @property
    def decimals(self) -> int:
        """Decimal places of a written value (0 for integer styles)."""
        return 0 if self.number_format == "integer" else round(math.log10(self.scale))

    def quantize(self, value: float) -> int:
        """The integer level written for a normalised value (1e-6 of float slack is clamped)."""
        if not math.isfinite(value) or not -1e-6 <= value <= 1 + 1e-6:
            raise ValueError(
                f"style {self.name!r} writes normalised coordinates in [0, 1]; got {value!r} "
                "(normalise pixel boxes with normalize_box first)"
            )
        return min(self.max_level, max(0, round(value * self.scale)))

    def write(self, value: float) -> str:
        """The text of one normalised value."""
        level = self.quantize(value)
        if self.number_format == "integer":
            return str(level)
        if self.number_format == "shortest":
            return str(level / self.scale)
        return f"{level / self.scale:.{self.decimals}f}"

    def read(self, text: str) -> float:
        """The normalised value of one written number (integer styles divide by `scale`)."""
        number = float(text)
        return number / self.scale if self.number_format == "integer" else number


STYLES: dict[str, BoxStyle] = {
    style.name: style
    for style in (
        BoxStyle(name="sphinx", scale=100, max_level=100, number_format="fixed",
                 default_frame="padded"),
        BoxStyle(name="llava", scale=100, max_level=100, number_format="shortest",
                 default_frame="padded", number_sep=", ", pair_sep=", ", box_sep="; "),
        BoxStyle(name="shikra", scale=1000, max_level=1000, number_format="fixed",
                 default_frame="padded", phrase_open="", phrase_close="", phrase_gap=""),
        BoxStyle(name="qwen_vl", scale=1000, max_level=999, number_format="integer",
                 default_frame="per_axis", pair_open="(", pair_close=")", box_open="<box>",
                 box_close="</box>", box_sep="", shared_bracket=False, phrase_open="<ref>",
                 phrase_close="</ref>", phrase_gap=""),
        BoxStyle(name="minigpt_v2", scale=100, max_level=100, number_format="integer",
                 default_frame="per_axis", number_open="<", number_close=">", number_sep="",
                 pair_sep="", box_open="{", box_close="}", box_sep="<delim>",
                 shared_bracket=False),
    )
}  # fmt: skip


StyleLike = str | BoxStyle


def get_box_style(style: StyleLike) -> BoxStyle:
    """The style named `style` (or `style` itself); an unknown name lists the close matches."""
    if isinstance(style, BoxStyle):
        return style
    if style in STYLES:
        return STYLES[style]
    close = difflib.get_close_matches(str(style), list(STYLES), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown box style {style!r}; known: {', '.join(STYLES)}{hint}")
