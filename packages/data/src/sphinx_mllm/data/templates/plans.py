"""Layouts by conversation shape, for rendering in batches.

Two conversations with the same shape (the role of each message, the image placeholders in each
user message, the number of images the sample declares) are laid out alike: only the message
texts differ. `LayoutPlans` lays out each shape once, with the general `PieceBuilder`, on a
conversation whose message texts are sentinels (private-use characters around a number), and
keeps the pieces; a conversation of that shape then gets its piece texts by formatting the plan's
patterns with its own message texts (the parts of each user message between placeholders).

This gives the pieces `lay_out` gives, because the builder treats every message text alike:
message text merges with the template text of its turn and label state, whatever it says. The
exceptions go the general way, where they are checked and raise as always: anything that is not
a list of plain dicts with a known role and a string value, an empty or whitespace reply (an
error), a placeholder in an assistant or system message (an error), a generation prompt, and a
shape the builder refuses. A plan piece made of one message text alone disappears when that
text is empty, as the builder adds no piece for empty text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sphinx_mllm.data.templates.conversation import _ROLES, ConversationError
from sphinx_mllm.data.templates.layout import Piece, PieceBuilder
from sphinx_mllm.data.templates.rendering import Skeleton, lay_out, text_pieces

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters around a sentinel's number
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
_SYSTEM, _REPLY = -1, 0  # shape codes; a user message's code is its number of text parts

Shape = tuple[tuple[int, ...], int | None]


@dataclass(frozen=True, slots=True)
class LayoutPlan:
    """The pieces of one conversation shape. `formatted` holds (piece index, `str.format`
    pattern over the message texts) for each piece that holds message text; the other pieces'
    texts are fixed (template text, BOS, an image). `droppable` says whether some piece is one
    message text alone."""

    skeleton: Skeleton
    pieces: list[Piece]
    fixed_texts: tuple[str, ...]
    formatted: tuple[tuple[int, str], ...]
    droppable: bool
    fixed_ids: tuple[tuple[int, ...], ...]  # each piece's fixed ids (empty for text)
    text_pieces: tuple[tuple[int, bool, bool], ...]  # see `rendering.text_pieces`

    def texts(self, parts: Sequence[str]) -> list[str]:
        """The piece texts for a conversation whose message texts are `parts`."""
        texts = list(self.fixed_texts)
        for position, pattern in self.formatted:
            texts[position] = pattern.format(*parts)
        return texts


class LayoutPlans:
    """Plans by shape for one builder (one template, tokenizer and image setting)."""

    def __init__(self, builder: PieceBuilder) -> None:
        self.builder = builder
        self.image_text = builder.template.image_text
        self.plans: dict[Shape, LayoutPlan | None] = {}
        # a sentinel must not hold the placeholder, nor the template's text a sentinel
        texts = [v for v in vars(builder.template).values() if isinstance(v, str)]
        self.enabled = not any(c.isdigit() for c in self.image_text) and not any(
            mark in text for text in texts for mark in (_OPEN, _CLOSE)
        )

    def find(
        self, conversation: Sequence[Mapping[str, Any]], num_images: int | None
    ) -> tuple[LayoutPlan, list[str]] | None:
        """The plan and message texts of a conversation; None where it must be laid out the
        general way."""
        if not self.enabled:
            return None
        found = _shape(conversation, self.image_text)
        if found is None:
            return None
        codes, parts = found
        key = (codes, num_images)
        if key in self.plans:
            plan = self.plans[key]
        else:
            plan = self.plans[key] = self._plan(codes, num_images)
        return (plan, parts) if plan is not None else None

    def _plan(self, codes: tuple[int, ...], num_images: int | None) -> LayoutPlan | None:
        count = 0
        messages = []
        for code in codes:
            width = 1 if code in (_SYSTEM, _REPLY) else code
            texts = [f"{_OPEN}{count + i}{_CLOSE}" for i in range(width)]
            count += width
            role = {_SYSTEM: "system", _REPLY: "gpt"}.get(code, "human")
            messages.append({"from": role, "value": self.image_text.join(texts)})
        try:
            roles, pieces = lay_out(self.builder, messages, num_images, "<layout plan>")
        except ConversationError:
            return None  # the general way raises it for the real conversation
        formatted: list[tuple[int, str]] = []
        droppable = False
        seen: list[int] = []
        for position, piece in enumerate(pieces):
            split = _SENTINEL.split(piece.text) if not piece.token_ids else [piece.text]
            if len(split) == 1:
                continue
            literals, numbers = split[0::2], [int(n) for n in split[1::2]]
            seen += numbers
            droppable |= len(numbers) == 1 and not any(literals)
            pattern = _escape(literals[0])
            for number, literal in zip(numbers, literals[1:], strict=True):
                pattern += f"{{{number}}}" + _escape(literal)
            formatted.append((position, pattern))
        if len(seen) != len(set(seen)) or not set(seen) <= set(range(count)):
            return None  # a sentinel cut or repeated: not a layout this scheme reproduces
        return LayoutPlan(
            skeleton=Skeleton.of(roles, pieces),
            pieces=pieces,
            fixed_texts=tuple(piece.text for piece in pieces),
            formatted=tuple(formatted),
            droppable=droppable,
            fixed_ids=tuple(piece.token_ids for piece in pieces),
            text_pieces=text_pieces(pieces),
        )


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def _shape(
    conversation: Sequence[Mapping[str, Any]], image_text: str
) -> tuple[tuple[int, ...], list[str]] | None:
    """The shape codes and message texts (user messages split at placeholders), or None for a
    conversation the plans do not cover."""
    if type(conversation) is not list and type(conversation) is not tuple:
        return None
    codes: list[int] = []
    parts: list[str] = []
    for position, item in enumerate(conversation):
        if type(item) is not dict:
            return None
        speaker = item["from"] if "from" in item else item.get("role")
        text = item["value"] if "value" in item else item.get("content")
        if type(speaker) is not str or type(text) is not str:
            return None
        role = _ROLES.get(speaker) or _ROLES.get(speaker.lower())
        if role == "user":
            split = text.split(image_text)
            parts += split
            codes.append(len(split))
        elif role == "assistant" and text.strip() and image_text not in text:
            parts.append(text)
            codes.append(_REPLY)
        elif role == "system" and position == 0 and image_text not in text:
            parts.append(text)
            codes.append(_SYSTEM)
        else:
            return None
    return tuple(codes), parts
