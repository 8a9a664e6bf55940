"""A chat template as data: the text around each turn, which part of it is the loss target, and
where images go. `rendering.render` turns a template plus a conversation into token ids.

Template strings are plain text with up to four markers: `{system}` and `{message}` (where the
system prompt and a message go, each at most once) and `{bos}` / `{eos}` (the tokenizer's own
begin- and end-of-sequence tokens, whatever their spelling). Markers are only read in the template,
never in messages: a message that contains the text `{eos}` or `</s>` stays text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

BOS = "{bos}"
EOS = "{eos}"
MESSAGE = "{message}"
SYSTEM = "{system}"

_SEQUENCE_MARKER = re.compile(r"(\{bos\}|\{eos\})")


class ImageSlot(str, Enum):
    """Where images go when the caller says a sample has images but no message holds a
    placeholder for them."""

    AFTER_BOS = "after_bos"
    """Straight after BOS, before the system prompt (LLaMA2-Accessory's legacy placement,
    `insert_implicit_meida_token_after_bos`, which SPHINX was trained with)."""

    FIRST_USER_MESSAGE = "first_user_message"
    """At the start of the first user message, followed by a newline (LLaVA's `<image>\\n`)."""


@dataclass(frozen=True)
class ChatTemplate:
    """How one conversation format renders; see the module docstring for the markers.

    A turn renders as follows (labels on the starred parts only):
    user: `user_template` with `{message}` replaced (`system_template` is prepended to the first
    user message when `system_in_first_user`); assistant: `assistant_prefix`, then
    *`reply_lead` + message + `end_marker`*, then `turn_separator`.
    """

    name: str
    summary: str
    user_template: str
    assistant_prefix: str
    end_marker: str
    reply_lead: str = ""
    """Labelled text before each reply. Tokenizers attach a space to the word after it ("▁Yes",
    "ĠYes"), so a template whose prompt ends in ": " puts that space here instead."""
    turn_separator: str = ""
    system_prompt: str | None = None
    """The default system message; a leading `system` turn in the conversation replaces it."""
    system_template: str = ""
    system_in_first_user: bool = False
    add_bos: bool = False
    keep_user_text: bool = True
    """False for captioning templates: a user turn contributes only its images."""
    image_text: str = "<image>"
    image_slot: ImageSlot = ImageSlot.FIRST_USER_MESSAGE
    special_tokens: tuple[str, ...] = ()
    """Template strings that become one token where the tokenizer has them as one token (e.g.
    `<|im_start|>`); elsewhere they are tokenised as text."""
    stop_strings: tuple[str, ...] = ()
    """Text that ends a generated reply, besides the EOS token, which always does."""

    def __post_init__(self) -> None:
        if self.user_template.count(MESSAGE) != 1:
            raise ValueError(
                f"Chat template {self.name!r}: user_template must hold {MESSAGE} exactly once, "
                f"got {self.user_template!r}"
            )
        if self.system_template and self.system_template.count(SYSTEM) != 1:
            raise ValueError(
                f"Chat template {self.name!r}: system_template must hold {SYSTEM} exactly once, "
                f"got {self.system_template!r}"
            )
        if self.system_prompt is not None and not self.system_template:
            raise ValueError(
                f"Chat template {self.name!r} has a system_prompt but no system_template"
            )
        fixed = {
            "assistant_prefix": self.assistant_prefix,
            "end_marker": self.end_marker,
            "reply_lead": self.reply_lead,
            "turn_separator": self.turn_separator,
        }
        for field_name, value in fixed.items():
            if MESSAGE in value or SYSTEM in value:
                raise ValueError(
                    f"Chat template {self.name!r}: {field_name} {value!r} cannot hold "
                    f"{MESSAGE} or {SYSTEM}"
                )
        if not self.image_text:
            raise ValueError(f"Chat template {self.name!r}: image_text must not be empty")

    @property
    def has_system(self) -> bool:
        """Whether the template can render a system prompt at all."""
        return bool(self.system_template)

    def user_parts(self) -> tuple[str, str]:
        """The user template's text before and after `{message}`."""
        before, after = self.user_template.split(MESSAGE)
        return before, after

    def system_parts(self) -> tuple[str, str]:
        """The system template's text before and after `{system}`."""
        before, after = self.system_template.split(SYSTEM)
        return before, after


def split_sequence_markers(template_text: str) -> list[str]:
    """Template text cut around `{bos}` / `{eos}`, markers kept as their own items."""
    return [piece for piece in _SEQUENCE_MARKER.split(template_text) if piece]
