"""Lay a checked conversation out as pieces in order: template text, messages, BOS/EOS and other
special tokens, image placeholder spans; each piece knows its turn and whether it is a label.
Neighbouring text of one turn and one label state is one piece: the unit of tokenisation.

`rendering` tokenises the pieces; this module decides where everything goes and rejects what
cannot be rendered (images outside user messages, a placeholder count that does not match the
sample's images, a missing BOS/EOS, an empty reply).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sphinx_mllm.data.templates.base import (
    BOS,
    EOS,
    ChatTemplate,
    ImageSlot,
    split_sequence_markers,
)
from sphinx_mllm.data.templates.conversation import (
    Conversation,
    ConversationError,
    Message,
    Role,
)
from sphinx_mllm.data.templates.tokenization import TextTokenizer


@dataclass(slots=True)
class Piece:
    """A run of the rendered sequence: text to tokenise, or fixed ids (BOS, EOS, a special
    token, an image placeholder span)."""

    text: str
    turn: int  # index into the rendered turns; -1 before the first turn
    labelled: bool = False
    token_ids: tuple[int, ...] = ()  # fixed ids; empty for text to tokenise
    is_image: bool = False
    from_template: bool = False
    """The text is the same in every conversation (template text, the default system prompt),
    so its ids can be cached per tokenizer."""

    @property
    def is_text(self) -> bool:
        return not self.token_ids


class PieceBuilder:
    """Lays checked conversations out as template and message pieces, in order; one builder
    serves any number of conversations, one at a time."""

    def __init__(
        self,
        template: ChatTemplate,
        tokenizer: TextTokenizer,
        image_token: int | None,
        image_token_count: int,
    ) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.sample_id = ""
        self.image_token = image_token
        self.image_token_count = image_token_count
        self._special_ids = {
            text: token_id
            for text in template.special_tokens
            if (token_id := tokenizer.special_token_id(text)) is not None
        }
        self._specials = (
            re.compile("(" + "|".join(map(re.escape, self._special_ids)) + ")")
            if self._special_ids
            else None
        )
        self._template_chunks: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {}
        self.pieces: list[Piece] = []

    def error(self, problem: str) -> ConversationError:
        return ConversationError(self.sample_id, problem)

    def build(
        self, conversation: Conversation, num_images: int | None, sample_id: str
    ) -> tuple[list[Piece], list[Role]]:
        self.sample_id = sample_id
        self.pieces = []
        template = self.template
        messages = list(conversation.messages)
        system = template.system_prompt if conversation.system is None else conversation.system
        if conversation.system is not None and not template.has_system:
            raise self.error(f"chat template {template.name!r} has no place for a system message")
        implicit = self._count_images(messages, system, num_images)

        roles: list[Role] = []
        if template.add_bos:
            self._add_template_text(BOS, turn=-1)
        if implicit and template.image_slot is ImageSlot.AFTER_BOS:
            for _ in range(implicit):
                self._add_image(turn=-1)
        first_user_prefix = ""
        if implicit and template.image_slot is ImageSlot.FIRST_USER_MESSAGE:
            first_user_prefix = (template.image_text + "\n") * implicit
        if system is not None and not template.system_in_first_user:
            roles.append("system")
            self._add_wrapped(
                template.system_parts(),
                system,
                turn=0,
                images=False,
                from_template=conversation.system is None,
            )
        for position, message in enumerate(messages):
            turn = len(roles)
            roles.append(message.role)
            if message.role == "user":
                text = message.text
                if position == 0:
                    text = first_user_prefix + text
                    if system is not None and template.system_in_first_user:
                        before, after = template.system_parts()
                        text = before + system + after + text
                self._add_wrapped(template.user_parts(), text, turn, images=True)
            else:
                self._add_reply(message.text, message.index, turn)
        return self.pieces, roles

    def _count_images(
        self, messages: list[Message], system: str | None, num_images: int | None
    ) -> int:
        """Check where placeholders are; return how many images the template must place."""
        image_text = self.template.image_text
        if system is not None and image_text in system:
            raise self.error(
                f"the system message holds the image placeholder {image_text!r}; "
                "images belong in user messages"
            )
        for message in messages:
            if message.role == "assistant" and image_text in (message.text or ""):
                raise self.error(
                    f"message {message.index} (assistant) holds the image placeholder "
                    f"{image_text!r}; images belong in user messages"
                )
        placeholders = sum(m.text.count(image_text) for m in messages if m.role == "user")
        implicit = 0
        if num_images is not None:
            if num_images < 0:
                raise self.error(f"num_images must be >= 0, got {num_images}")
            if placeholders == 0:
                implicit = num_images
            elif placeholders != num_images:
                raise self.error(
                    f"the messages hold {placeholders} image placeholders ({image_text!r}) "
                    f"but the sample has {num_images} image(s)"
                )
        if (placeholders or implicit) and self.image_token is None:
            raise self.error(
                f"the conversation has {placeholders or implicit} image(s) but no image_token "
                "id was given"
            )
        return implicit

    def _add_wrapped(
        self,
        parts: tuple[str, str],
        text: str,
        turn: int,
        *,
        images: bool,
        from_template: bool = False,
    ) -> None:
        before, after = parts
        self._add_template_text(before, turn)
        if images:
            chunks = text.split(self.template.image_text)
            if not self.template.keep_user_text:
                chunks = [""] * len(chunks)  # only the images of a user turn stay
            for index, chunk in enumerate(chunks):
                if index:
                    self._add_image(turn)
                self._add_text(chunk, turn)
        else:
            self._add_text(text, turn, from_template=from_template)
        self._add_template_text(after, turn)

    def _add_reply(self, text: str | None, index: int, turn: int) -> None:
        template = self.template
        self._add_template_text(template.assistant_prefix, turn)
        if text is None:
            return  # a generation prompt ends with the assistant prefix
        if not text.strip():
            raise self.error(
                f"message {index} (assistant) is empty: there would be nothing to learn"
            )
        self._add_template_text(template.reply_lead, turn, labelled=True)
        self._add_text(text, turn, labelled=True)
        self._add_template_text(template.end_marker, turn, labelled=True)
        self._add_template_text(template.turn_separator, turn)

    def _add_text(
        self, text: str, turn: int, labelled: bool = False, *, from_template: bool = False
    ) -> None:
        if not text:
            return
        last = self.pieces[-1] if self.pieces else None
        if (
            last is not None
            and not last.token_ids
            and (last.turn, last.labelled) == (turn, labelled)
        ):
            last.text += text
            last.from_template = last.from_template and from_template
        else:
            self.pieces.append(Piece(text, turn, labelled, from_template=from_template))

    def _add_image(self, turn: int) -> None:
        ids = (self.image_token,) * self.image_token_count
        self.pieces.append(Piece(self.template.image_text, turn, token_ids=ids, is_image=True))

    def _add_template_text(self, text: str, turn: int, labelled: bool = False) -> None:
        if not text:
            return
        chunks = self._template_chunks.get(text)
        if chunks is None:
            chunks = self._template_chunks[text] = self._split_template_text(text)
        for chunk, token_ids in chunks:
            if token_ids:
                self.pieces.append(Piece(chunk, turn, labelled, token_ids=token_ids))
            else:
                self._add_text(chunk, turn, labelled, from_template=True)

    def _split_template_text(self, text: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Template text as chunks, each with its fixed ids (BOS, EOS, a special token) or no
        ids (text to tokenise); the same for every conversation, so built once per text."""
        chunks: list[tuple[str, tuple[int, ...]]] = []
        for piece in split_sequence_markers(text):
            if piece in (BOS, EOS):
                token_id = self.tokenizer.bos_id if piece == BOS else self.tokenizer.eos_id
                if token_id is None:
                    which = piece[1:-1]
                    raise self.error(
                        f"chat template {self.template.name!r} needs the {which.upper()} token "
                        f"but the tokenizer has none; name it: as_text_tokenizer(tokenizer, "
                        f"{which}_token=...)"
                    )
                chunks.append((self.tokenizer.token_text(token_id), (token_id,)))
                continue
            for chunk in self._specials.split(piece) if self._specials else [piece]:
                if chunk in self._special_ids:
                    chunks.append((chunk, (self._special_ids[chunk],)))
                elif chunk:
                    chunks.append((chunk, ()))
        return tuple(chunks)
