"""Render a conversation with a chat template into token ids, loss labels and image spans.

Each turn is tokenised on its own, in pieces whose boundaries are token boundaries: the template
text of a turn, its message, the labelled reply (lead + message + end marker) and the text
after it. Labels are copied from the ids of the labelled pieces, never found again by
re-tokenising strings. Every piece must decode back to exactly its text, and the whole id
sequence to the rendered text (checked, unless the tokenizer decodes piecewise, as SentencePiece
does, which makes it follow from the pieces; see `tokenization` for SentencePiece's dummy
prefix); a piece that does not, an empty reply, or a misplaced image placeholder raises
`ConversationError` naming the sample. `<image>` in a user message becomes the caller's
placeholder id (or `image_token_count` copies of it) and is never seen by the tokenizer.
`batch.render_batch` gives the same samples for many conversations, calling the tokenizer in
batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sphinx_mllm.data.templates.base import ChatTemplate
from sphinx_mllm.data.templates.conversation import ConversationError, Role, read_conversation
from sphinx_mllm.data.templates.layout import Piece, PieceBuilder
from sphinx_mllm.data.templates.tokenization import (
    TextTokenizer,
    TokenizationError,
    as_text_tokenizer,
    decode,
)

IGNORE_INDEX = -100
"""The label of a position that carries no loss (PyTorch's `cross_entropy` default)."""


@dataclass(frozen=True)
class ImageSpan:
    """The token positions `[start, end)` that hold one image's placeholder ids."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class TurnSpan:
    """The token positions `[start, end)` of one turn, template text included."""

    role: Role
    start: int
    end: int


@dataclass(frozen=True)
class RenderedSample:
    """Token ids and labels of one conversation (labels are `IGNORE_INDEX` outside replies)."""

    sample_id: str
    template: str
    text: str
    """The rendered text: special tokens as spelt by the tokenizer, each image as the
    template's `image_text` once. `decode_sample` gives it back from the ids."""
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    image_spans: tuple[ImageSpan, ...]
    turns: tuple[TurnSpan, ...]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def image_positions(self) -> tuple[int, ...]:
        """The first position of each image span."""
        return tuple(span.start for span in self.image_spans)

    @property
    def num_label_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render(
    template: ChatTemplate,
    conversation: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    image_token: int | None = None,
    image_token_count: int = 1,
    num_images: int | None = None,
    sample_id: str = "<no id>",
) -> RenderedSample:
    """Render one conversation for training, or a generation prompt when its last assistant
    value is None.

    `image_token` is the placeholder id each `<image>` becomes, repeated `image_token_count`
    times (the visual token count, when the caller wants the span reserved now). `num_images`,
    when given, is how many images the sample carries: the placeholders must number exactly that,
    or be absent, in which case the template's `image_slot` places them.
    """
    tok = as_text_tokenizer(tokenizer)
    builder = PieceBuilder(template, tok, image_token, image_token_count)
    roles, pieces = lay_out(builder, conversation, num_images, sample_id)
    start = first_text_piece(pieces)
    piece_ids = [
        _encode_piece(tok, piece, index == start, sample_id) if piece.is_text else piece.token_ids
        for index, piece in enumerate(pieces)
    ]
    sample = assemble(template, sample_id, roles, pieces, piece_ids)
    if not getattr(tok, "piecewise_decoding", False):
        _check_whole_decode(tok, template, sample)
    return sample


def lay_out(
    builder: PieceBuilder,
    conversation: Sequence[Mapping[str, Any]],
    num_images: int | None,
    sample_id: str,
) -> tuple[list[Role], list[Piece]]:
    """A conversation checked and laid out: the role of each turn, and its pieces."""
    if builder.image_token_count < 1:
        raise ConversationError(
            sample_id, f"image_token_count must be >= 1, got {builder.image_token_count}"
        )
    pieces, roles = builder.build(read_conversation(conversation, sample_id), num_images, sample_id)
    return roles, pieces


def first_text_piece(pieces: Sequence[Piece]) -> int:
    """The index of the piece encoded as the start of the sequence (-1 if none is text)."""
    for index, piece in enumerate(pieces):
        if not piece.token_ids:
            return index
    return -1


def assemble(
    template: ChatTemplate,
    sample_id: str,
    roles: Sequence[Role],
    pieces: Sequence[Piece],
    piece_ids: Sequence[Sequence[int]],
) -> RenderedSample:
    """The sample from its pieces and their checked ids."""
    input_ids: list[int] = []
    labels: list[int] = []
    image_spans: list[ImageSpan] = []
    bounds: list[tuple[int, int] | None] = [None] * len(roles)
    for piece, ids in zip(pieces, piece_ids, strict=True):
        start = len(input_ids)
        input_ids += ids
        labels += ids if piece.labelled else [IGNORE_INDEX] * len(ids)
        end = len(input_ids)
        if piece.is_image:
            image_spans.append(ImageSpan(start, end))
        turn = piece.turn
        if turn >= 0:
            span = bounds[turn]
            bounds[turn] = (span[0], end) if span else (start, end)
    turns = []
    previous_end = next((span[0] for span in bounds if span), len(input_ids))
    for role, span in zip(roles, bounds, strict=True):
        start, end = span if span else (previous_end, previous_end)
        turns.append(TurnSpan(role, start, end))
        previous_end = end
    return RenderedSample(
        sample_id=sample_id,
        template=template.name,
        text="".join([piece.text for piece in pieces]),
        input_ids=tuple(input_ids),
        labels=tuple(labels),
        image_spans=tuple(image_spans),
        turns=tuple(turns),
    )


def _encode_piece(
    tokenizer: TextTokenizer, piece: Piece, sequence_start: bool, sample_id: str
) -> list[int]:
    what = f"{'the reply' if piece.labelled else 'the text'} {piece.text[:60]!r}"
    try:
        ids = tokenizer.encode_text(piece.text, sequence_start=sequence_start)
        decoded = tokenizer.decode_text(ids, sequence_start=sequence_start)
    except TokenizationError as error:
        raise ConversationError(sample_id, f"{what}: {error}") from error
    if not ids:
        raise ConversationError(sample_id, f"{what} tokenises to nothing")
    special = [i for i in ids if tokenizer.is_special(i)]
    if special:
        spelt = ", ".join(repr(tokenizer.token_text(i)) for i in special)
        raise ConversationError(
            sample_id, f"{what} holds text the tokenizer reads as special token(s) {spelt}"
        )
    if decoded != piece.text:
        at = _first_difference(decoded, piece.text)
        raise ConversationError(
            sample_id,
            f"{what} does not survive tokenisation: from character {at}, "
            f"{piece.text[at : at + 20]!r} decodes as {decoded[at : at + 20]!r}",
        )
    return ids


def _first_difference(left: str, right: str) -> int:
    pairs = enumerate(zip(left, right, strict=False))
    return next((i for i, (a, b) in pairs if a != b), min(len(left), len(right)))


def decode_sample(sample: RenderedSample, tokenizer: Any, *, image_text: str = "<image>") -> str:
    """The text of a sample's ids, each image span written once as `image_text`; for a sample
    as rendered this is `sample.text`."""
    return _decode_with_images(
        as_text_tokenizer(tokenizer), sample.input_ids, sample.image_spans, image_text
    )


def _decode_with_images(
    tokenizer: TextTokenizer,
    input_ids: Sequence[int],
    image_spans: Sequence[ImageSpan],
    image_text: str,
) -> str:
    items: list[int | str] = list(input_ids)
    for span in reversed(image_spans):
        items[span.start : span.end] = [image_text]
    return decode(tokenizer, items)


def _check_whole_decode(
    tokenizer: TextTokenizer, template: ChatTemplate, sample: RenderedSample
) -> None:
    """Each piece decodes to its own text; this checks that the decoder reads them the same side
    by side (a decoder whose output depends on the neighbouring tokens would not)."""
    decoded = _decode_with_images(
        tokenizer, sample.input_ids, sample.image_spans, template.image_text
    )
    text = sample.text
    if decoded != text:
        at = _first_difference(decoded, text)
        raise ConversationError(
            sample.sample_id,
            f"the ids decode to a different text as a whole: from character {at}, "
            f"{text[at : at + 20]!r} decodes as {decoded[at : at + 20]!r}",
        )
