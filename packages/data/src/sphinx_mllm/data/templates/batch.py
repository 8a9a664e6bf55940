"""Render many conversations at once: the same `RenderedSample`s as `render` on each, with the
tokenizer called in batches instead of once per piece.

Conversations are laid out by shape (`plans`): the pieces of each shape once, then each
conversation's texts formatted into them. The text pieces of all conversations are encoded in one
batched call per kind (the start of a sequence, the middle of one), checked in batch (ids
present, no special token where the tokenizer can make one from text, decoding back to exactly
the text) and assembled; the whole id sequences are then decoded in batch and compared
with the rendered texts, as `render` does one by one (unless the tokenizer decodes
piecewise). Pieces made only of template text (role prefixes, separators, the default system
prompt) are the same in every conversation: their checked ids are kept per tokenizer and not
encoded again.

A conversation that fails any check is handed to `render`, which raises the error it always
raises; conversations are handed over in order, so the error names the first failing sample.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

from sphinx_mllm.data.templates.base import ChatTemplate
from sphinx_mllm.data.templates.conversation import ConversationError
from sphinx_mllm.data.templates.layout import Piece, PieceBuilder
from sphinx_mllm.data.templates.plans import LayoutPlans
from sphinx_mllm.data.templates.rendering import (
    RenderedSample,
    Skeleton,
    assemble,
    lay_out,
    render,
    text_pieces,
)
from sphinx_mllm.data.templates.tokenization import (
    TextTokenizer,
    TokenizationError,
    as_text_tokenizer,
)

_TEMPLATE_IDS: weakref.WeakKeyDictionary[Any, dict[tuple[str, bool], list[int]]] = (
    weakref.WeakKeyDictionary()
)
"""Per tokenizer: the checked ids of template-only pieces, by (text, sequence_start)."""


def render_batch(
    template: ChatTemplate,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tokenizer: Any,
    *,
    image_token: int | None = None,
    image_token_count: int = 1,
    num_images: Sequence[int | None] | None = None,
    sample_ids: Sequence[str] | None = None,
) -> list[RenderedSample]:
    """`render` of each conversation, tokenised in batches (see the module docstring).

    `num_images` and `sample_ids` hold one entry per conversation; sample ids default to each
    conversation's position in the batch.
    """
    tok = as_text_tokenizer(tokenizer)
    conversations = list(conversations)
    ids = [str(i) for i in range(len(conversations))] if sample_ids is None else list(sample_ids)
    counts = [None] * len(conversations) if num_images is None else list(num_images)
    for name, values in (("sample_ids", ids), ("num_images", counts)):
        if len(values) != len(conversations):
            raise ValueError(
                f"{name} has {len(values)} entries for {len(conversations)} conversations"
            )

    def one_by_one(index: int) -> RenderedSample:
        return render(
            template,
            conversations[index],
            tok,
            image_token=image_token,
            image_token_count=image_token_count,
            num_images=counts[index],
            sample_id=ids[index],
        )

    with _cyclic_gc_paused():
        batch = _Batch(template, tok, PieceBuilder(template, tok, image_token, image_token_count))
        for index, conversation in enumerate(conversations):
            batch.add(index, conversation, counts[index], ids[index])
        try:
            samples = batch.render(ids)
        except TokenizationError:  # a text no anchor can carry: `render` names its sample
            samples = None
        # freed now, so that the collector, back on, does not walk the layouts' pieces
        del batch
    if samples is None:
        return [one_by_one(index) for index in range(len(conversations))]
    return [
        sample if sample is not None else one_by_one(index) for index, sample in enumerate(samples)
    ]


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: a batch builds some 50 short-lived containers per
    conversation, none of them cyclic, and the collector would otherwise scan them again and
    again as they accumulate (a fifth of the batch's time). Reference counting still frees
    everything; the collector's state is restored on the way out."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_Layout = tuple[Skeleton, list[Piece], list[Sequence[int]], list[str]]
"""A conversation's skeleton, pieces, the ids of each piece (text pieces: filled in later) and
the text of each piece (a plan's pieces are shared by the conversations of a shape)."""
_Slot = tuple[int, list[Sequence[int]], int]
"""Where a text piece's ids go: (conversation index, that conversation's piece ids, position)."""


class _Batch:
    """Conversations laid out one by one, then tokenised, checked and assembled together."""

    def __init__(self, template: ChatTemplate, tokenizer: TextTokenizer, builder: PieceBuilder):
        self.template = template
        self.tokenizer = tokenizer
        self.builder = builder
        self.cache = _template_ids(tokenizer)
        self.plans = LayoutPlans(builder)
        self.layouts: list[_Layout | None] = []
        # Message pieces to encode, by sequence_start, each with where its ids go; template-only
        # pieces not cached yet are encoded once per batch, by (text, sequence_start).
        self.texts: dict[bool, list[str]] = {True: [], False: []}
        self.slots: dict[bool, list[_Slot]] = {True: [], False: []}
        self.constants: dict[tuple[str, bool], list[_Slot]] = {}

    def add(
        self,
        index: int,
        conversation: Sequence[Mapping[str, Any]],
        num_images: int | None,
        sample_id: str,
    ) -> None:
        found = self.plans.find(conversation, num_images)
        if found is None:
            try:
                roles, pieces = lay_out(self.builder, conversation, num_images, sample_id)
            except ConversationError:
                self.layouts.append(None)  # `render` raises it again, in order
                return
            texts = [piece.text for piece in pieces]
            skeleton = Skeleton.of(roles, pieces)
            piece_ids: list[Sequence[int]] = [piece.token_ids for piece in pieces]
            order = text_pieces(pieces)
        else:
            plan, parts = found
            skeleton, pieces, texts = plan.skeleton, plan.pieces, plan.texts(parts)
            piece_ids, order = list(plan.fixed_ids), plan.text_pieces
            if plan.droppable and not all(texts):  # a piece of one empty message text
                kept = [position for position, text in enumerate(texts) if text]
                pieces, texts = [pieces[i] for i in kept], [texts[i] for i in kept]
                skeleton = Skeleton.of(skeleton.roles, pieces)
                piece_ids, order = [piece.token_ids for piece in pieces], text_pieces(pieces)
        for position, start, from_template in order:
            text = texts[position]
            if not from_template:
                self.texts[start].append(text)
                self.slots[start].append((index, piece_ids, position))
            elif (cached := self.cache.get((text, start))) is not None:
                piece_ids[position] = cached
            else:
                self.constants.setdefault((text, start), []).append((index, piece_ids, position))
        self.layouts.append((skeleton, pieces, piece_ids, texts))

    def render(self, sample_ids: list[str]) -> list[RenderedSample | None]:
        """The samples whose every check passes; None for the others."""
        failed = {index for index, layout in enumerate(self.layouts) if layout is None}
        for start in (True, False):
            failed |= self._encode(start)
        samples: list[RenderedSample | None] = [None] * len(self.layouts)
        piecewise = getattr(self.tokenizer, "piecewise_decoding", False)
        plans: dict[int, list[str | tuple[int, ...]]] = {}
        for index, layout in enumerate(self.layouts):
            if layout is None or index in failed:
                continue
            skeleton, pieces, piece_ids, texts = layout
            sample = assemble(self.template, sample_ids[index], skeleton, piece_ids, "".join(texts))
            samples[index] = sample
            if not piecewise:
                plan = _decode_plan(self.tokenizer, self.template, sample, pieces, piece_ids)
                plans[index] = plan
        decoded = _decode_plans(self.tokenizer, list(plans.values())) if plans else []
        for index, text in zip(plans, decoded, strict=True):
            if text != samples[index].text:  # type: ignore[union-attr]
                samples[index] = None
        return samples

    def _encode(self, start: bool) -> set[int]:
        """Encode and check the pending text pieces of one kind; the conversations that fail."""
        slots = self.slots[start]
        texts = [*self.texts[start], *(text for text, kind in self.constants if kind == start)]
        encoded, decoded = _round_trip_many(self.tokenizer, texts, start)
        has_special = _special_test(self.tokenizer)
        any_special = getattr(self.tokenizer, "text_makes_special", True) and has_special(
            chain.from_iterable(encoded)
        )
        good = [
            bool(ids) and back == text and not (any_special and has_special(ids))
            for text, ids, back in zip(texts, encoded, decoded, strict=True)
        ]
        failed = set()
        count = len(slots)  # the message pieces come first, then the template-only ones
        for (index, piece_ids, position), ids, ok in zip(
            slots, encoded[:count], good[:count], strict=True
        ):
            if ok:
                piece_ids[position] = ids
            else:
                failed.add(index)
        for text, ids, ok in zip(texts[count:], encoded[count:], good[count:], strict=True):
            waiting = self.constants[(text, start)]
            if ok:
                self.cache[(text, start)] = ids
                for _, piece_ids, position in waiting:
                    piece_ids[position] = ids
            else:
                failed.update(index for index, _, _ in waiting)
        return failed


def _decode_plan(
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    sample: RenderedSample,
    pieces: list[Piece],
    piece_ids: list[Sequence[int]],
) -> list[str | tuple[int, ...]]:
    """The whole sequence as `decode_sample` reads it: images as their text, special tokens as
    spelt, and the runs of other ids between them (slices of the sample's ids) to decode."""
    ids = sample.input_ids
    parts: list[str | tuple[int, ...]] = []
    run_start = position = 0
    for piece, own_ids in zip(pieces, piece_ids, strict=True):
        end = position + len(own_ids)
        if piece.is_image:
            if run_start < position:
                parts.append(ids[run_start:position])
            parts.append(template.image_text)
            run_start = end
        elif piece.token_ids:  # fixed ids; text pieces are checked to hold no special token
            for at, token_id in enumerate(own_ids, position):
                if tokenizer.is_special(token_id):
                    if run_start < at:
                        parts.append(ids[run_start:at])
                    parts.append(tokenizer.token_text(token_id))
                    run_start = at + 1
        position = end
    if run_start < position:
        parts.append(ids[run_start:position])
    return parts


def _decode_plans(tokenizer: TextTokenizer, plans: list[list[str | tuple[int, ...]]]) -> list[str]:
    """The text of each plan; its first run is read as the start of a sequence."""
    runs: dict[bool, list[tuple[int, ...]]] = {True: [], False: []}
    for parts in plans:
        first = True
        for part in parts:
            if not isinstance(part, str):
                runs[first].append(part)
                first = False
    decoded = {start: iter(_decode_many(tokenizer, lists, start)) for start, lists in runs.items()}
    texts = []
    for parts in plans:
        first = True
        strings = []
        for part in parts:
            if isinstance(part, str):
                strings.append(part)
            else:
                strings.append(next(decoded[first]))
                first = False
        texts.append("".join(strings))
    return texts


def _template_ids(tokenizer: TextTokenizer) -> dict[tuple[str, bool], list[int]]:
    try:
        return _TEMPLATE_IDS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache across calls
        return {}


def _round_trip_many(
    tokenizer: TextTokenizer, texts: list[str], start: bool
) -> tuple[list[list[int]], list[str]]:
    batch = getattr(tokenizer, "round_trip_many", None)
    if batch is not None:
        return batch(texts, sequence_start=start)
    encoded = [tokenizer.encode_text(text, sequence_start=start) for text in texts]
    return encoded, [tokenizer.decode_text(ids, sequence_start=start) for ids in encoded]


def _decode_many(
    tokenizer: TextTokenizer, id_lists: Sequence[Sequence[int]], start: bool
) -> list[str]:
    batch = getattr(tokenizer, "decode_many", None)
    if batch is not None:
        return batch(id_lists, sequence_start=start)
    return [tokenizer.decode_text(ids, sequence_start=start) for ids in id_lists]


def _special_test(tokenizer: TextTokenizer) -> Callable[[Iterable[int]], bool]:
    batch = getattr(tokenizer, "has_special", None)
    if batch is not None:
        return batch
    return lambda ids: any(tokenizer.is_special(token_id) for token_id in ids)
