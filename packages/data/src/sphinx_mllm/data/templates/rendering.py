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
from itertools import accumulate
from typing import Any, NamedTuple

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


class ImageSpan(NamedTuple):
    """The token positions `[start, end)` that hold one image's placeholder ids."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


class TurnSpan(NamedTuple):
    """The token positions `[start, end)` of one turn, template text included."""

    role: Role
    start: int
    end: int


@dataclass(frozen=True, slots=True)
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
    piece_ids: list[Sequence[int]] = [piece.token_ids for piece in pieces]
    for index, start, _ in text_pieces(pieces):
        piece_ids[index] = _encode_piece(tok, pieces[index], start, sample_id)
    text = "".join([piece.text for piece in pieces])
    sample = assemble(template, sample_id, Skeleton.of(roles, pieces), piece_ids, text)
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


def text_pieces(pieces: Sequence[Piece]) -> tuple[tuple[int, bool, bool], ...]:
    """(position, sequence_start, from_template) of each piece to tokenise; the first is encoded
    as the start of the sequence."""
    texts = [index for index, piece in enumerate(pieces) if piece.is_text]
    return tuple((i, i == texts[0], pieces[i].from_template) for i in texts)


@dataclass(frozen=True, slots=True)
class Skeleton:
    """Where the parts of a layout are, by piece index: the labelled pieces, the image pieces,
    and each turn's first and last piece (None for a turn without pieces). Conversations of one
    shape share it (`plans`)."""

    roles: tuple[Role, ...]
    labelled: tuple[int, ...]
    images: tuple[int, ...]
    turns: tuple[tuple[int, int] | None, ...]

    @classmethod
    def of(cls, roles: Sequence[Role], pieces: Sequence[Piece]) -> Skeleton:
        bounds: list[tuple[int, int] | None] = [None] * len(roles)
        for index, piece in enumerate(pieces):
            if piece.turn >= 0:
                first = bounds[piece.turn]
                bounds[piece.turn] = (first[0] if first else index, index)
        return cls(
            tuple(roles),
            tuple(i for i, piece in enumerate(pieces) if piece.labelled),
            tuple(i for i, piece in enumerate(pieces) if piece.is_image),
            tuple(bounds),
        )


def assemble(
    template: ChatTemplate,
    sample_id: str,
    skeleton: Skeleton,
    piece_ids: Sequence[Sequence[int]],
    text: str,
) -> RenderedSample:
    """The sample from its layout's skeleton, the checked ids of its pieces and its text."""
    lengths = [*map(len, piece_ids)]
    ends = [*accumulate(lengths)]
    total = ends[-1] if ends else 0
    joined: list[int] = []
    for ids in piece_ids:  # twice as fast as chain.from_iterable for these short runs
        joined += ids
    input_ids = tuple(joined)
    labels = [IGNORE_INDEX] * total
    for index in skeleton.labelled:
        labels[ends[index] - lengths[index] : ends[index]] = piece_ids[index]
    turns = []
    previous_end = next((ends[b[0]] - lengths[b[0]] for b in skeleton.turns if b), total)
    for role, bounds in zip(skeleton.roles, skeleton.turns, strict=True):
        if bounds is None:  # a turn with no tokens sits where the previous one ended
            turns.append(TurnSpan(role, previous_end, previous_end))
            continue
        first, last = bounds
        previous_end = ends[last]
        turns.append(TurnSpan(role, ends[first] - lengths[first], previous_end))
    return RenderedSample(
        sample_id=sample_id,
        template=template.name,
        text=text,
        input_ids=input_ids,
        labels=tuple(labels),
        image_spans=tuple(ImageSpan(ends[i] - lengths[i], ends[i]) for i in skeleton.images),
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
