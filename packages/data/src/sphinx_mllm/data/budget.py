"""Fit a rendered sample into a maximum sequence length, each image counted at its visual token
count (what the encoders and mixer declare before running).

A sample that fits is kept whole. Otherwise whole turns go from the end: the sample ends after
the last assistant turn that still fits. Only when not even the first reply fits whole is text
cut at the budget, inside that reply; a cut never falls inside an image span (it moves to before
the span, and the image goes with the text after it). A sample left without a label token, or
with fewer than `min_answer_tokens`, is dropped with a reason for the caller to count:

    results = [fit_to_budget(s, 576, 4096) for s in samples]
    dropped = Counter(r.drop_reason for r in results if r.dropped)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sphinx_mllm.data.templates.rendering import IGNORE_INDEX, ImageSpan, RenderedSample, TurnSpan


class DropReason(str, Enum):
    """Why a sample cannot be trained on within the budget."""

    NO_ANSWER = "no_answer"
    """The sample has no label token at all (a generation prompt, say)."""

    ANSWER_CUT = "answer_cut"
    """The text and images before the first reply fill the budget: the answer would be lost."""


@dataclass(frozen=True)
class BudgetedSample:
    """The first `keep` tokens of `sample`, which fit the budget; `keep` is 0 when dropped."""

    sample: RenderedSample
    keep: int
    length: int
    """The sequence length of the kept tokens once each image span is expanded."""
    dropped_turns: int
    """Turns removed whole from the end."""
    partial_turn: bool
    """Whether the last kept turn was cut inside (its reply then lacks its end marker)."""
    drop_reason: DropReason | None = None
    detail: str = ""

    @property
    def dropped(self) -> bool:
        return self.drop_reason is not None

    @property
    def truncated(self) -> bool:
        return not self.dropped and self.keep < len(self.sample)

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.sample.input_ids[: self.keep]

    @property
    def labels(self) -> tuple[int, ...]:
        return self.sample.labels[: self.keep]

    @property
    def image_spans(self) -> tuple[ImageSpan, ...]:
        """The image spans kept; the caller keeps the images they stand for, in order."""
        return tuple(span for span in self.sample.image_spans if span.end <= self.keep)

    @property
    def turns(self) -> tuple[TurnSpan, ...]:
        return tuple(
            TurnSpan(turn.role, turn.start, min(turn.end, self.keep))
            for turn in self.sample.turns
            if turn.start < self.keep
        )


def fit_to_budget(
    sample: RenderedSample,
    visual_tokens: int | Sequence[int],
    max_length: int,
    *,
    min_answer_tokens: int = 1,
) -> BudgetedSample:
    """Fit `sample` into `max_length` tokens; `visual_tokens` is how many tokens each image span
    expands to (one number for all, or one per span in order)."""
    if max_length < 1:
        raise ValueError(f"sample {sample.sample_id!r}: max_length must be >= 1, got {max_length}")
    counts = _visual_counts(sample, visual_tokens)
    budget = _Budget(sample.image_spans, counts)

    if sample.num_label_tokens == 0:
        return _dropped(sample, DropReason.NO_ANSWER, "the sample has no label token")
    if budget.expanded(len(sample)) <= max_length:
        return _kept(sample, len(sample), budget)

    reply_ends = [
        turn.end
        for turn in sample.turns
        if turn.role == "assistant" and _labels_in(sample, turn.start, turn.end)
    ]
    fitting = [end for end in reply_ends if budget.expanded(end) <= max_length]
    if fitting:
        return _kept(sample, max(fitting), budget)

    keep = budget.last_cut_within(max_length, len(sample))
    if _labels_in(sample, 0, keep) < min_answer_tokens:
        first_label = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
        return _dropped(
            sample,
            DropReason.ANSWER_CUT,
            f"{budget.expanded(first_label)} tokens come before the first answer token and "
            f"{min_answer_tokens} answer token(s) are required within max_length={max_length}",
        )
    return _kept(sample, keep, budget)


class _Budget:
    """Token positions in the sample against sequence positions once images are expanded."""

    def __init__(self, spans: Sequence[ImageSpan], counts: Sequence[int]) -> None:
        self.spans = spans
        self.counts = counts

    def expanded(self, keep: int) -> int:
        """The expanded length of the first `keep` tokens (`keep` outside any image span)."""
        extra = sum(
            count - span.length
            for span, count in zip(self.spans, self.counts, strict=True)
            if span.end <= keep
        )
        return keep + extra

    def last_cut_within(self, max_length: int, total: int) -> int:
        """The largest `keep` whose expanded length fits, never inside an image span."""
        shift = 0
        for span, count in zip(self.spans, self.counts, strict=True):
            if span.start + shift >= max_length:
                break
            if span.start + shift + count > max_length:
                return span.start
            shift += count - span.length
        return min(total, max_length - shift)


def _visual_counts(sample: RenderedSample, visual_tokens: int | Sequence[int]) -> list[int]:
    spans = sample.image_spans
    counts = [visual_tokens] * len(spans) if isinstance(visual_tokens, int) else list(visual_tokens)
    if len(counts) != len(spans):
        raise ValueError(
            f"sample {sample.sample_id!r}: {len(counts)} visual token counts given for "
            f"{len(spans)} image spans"
        )
    if any(count < 1 for count in counts):
        raise ValueError(f"sample {sample.sample_id!r}: visual token counts must be >= 1: {counts}")
    return counts


def _labels_in(sample: RenderedSample, start: int, end: int) -> int:
    return sum(label != IGNORE_INDEX for label in sample.labels[start:end])


def _kept(sample: RenderedSample, keep: int, budget: _Budget) -> BudgetedSample:
    return BudgetedSample(
        sample=sample,
        keep=keep,
        length=budget.expanded(keep),
        dropped_turns=sum(turn.start >= keep for turn in sample.turns),
        partial_turn=any(turn.start < keep < turn.end for turn in sample.turns),
    )


def _dropped(sample: RenderedSample, reason: DropReason, detail: str) -> BudgetedSample:
    return BudgetedSample(
        sample=sample,
        keep=0,
        length=0,
        dropped_turns=len(sample.turns),
        partial_turn=False,
        drop_reason=reason,
        detail=f"sample {sample.sample_id!r}: {detail}",
    )
