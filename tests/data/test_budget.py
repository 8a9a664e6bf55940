"""Sequence budget: samples that fit stay whole, whole turns go from the end first, a cut never
falls inside an image span, and a sample that would lose its whole answer is dropped with a
reason the caller can count."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_mllm.data.budget import DropReason, fit_to_budget
from sphinx_mllm.data.templates import (
    IGNORE_INDEX,
    SPHINX,
    VICUNA_V1,
    TextTokenizer,
    label_texts,
    render,
)

IMAGE = 9


class CharTokenizer:
    """One token per character (ids from 100), BOS 1, EOS 2: lengths are easy to reason about,
    and it shows that any object implementing `TextTokenizer` is used as it is."""

    bos_id = 1
    eos_id = 2

    def encode_text(self, text: str, *, sequence_start: bool) -> list[int]:
        return [100 + ord(character) for character in text]

    def decode_text(self, ids: Sequence[int], *, sequence_start: bool) -> str:
        return "".join(chr(token_id - 100) for token_id in ids)

    def special_token_id(self, text: str) -> int | None:
        return None

    def is_special(self, token_id: int) -> bool:
        return token_id in (1, 2)

    def token_text(self, token_id: int) -> str:
        return {1: "<s>", 2: "</s>"}[token_id]


TOKENIZER = CharTokenizer()


def conversation(*turns: str) -> list[dict[str, str]]:
    roles = ("human", "gpt")
    return [{"from": roles[i % 2], "value": value} for i, value in enumerate(turns)]


def sample_of(*turns: str, template=VICUNA_V1, sample_id="s-1"):
    return render(template, conversation(*turns), TOKENIZER, image_token=IMAGE, sample_id=sample_id)


def test_the_protocol_object_is_used_as_is():
    assert isinstance(TOKENIZER, TextTokenizer)


def test_a_sample_that_fits_is_kept_whole_and_images_count_at_their_size():
    sample = sample_of("<image>\nWhat?", "A dog.")
    result = fit_to_budget(sample, 576, 10_000)
    assert not result.dropped and not result.truncated
    assert result.input_ids == sample.input_ids
    assert result.length == len(sample) - 1 + 576
    assert fit_to_budget(sample, 576, len(sample) + 575).keep == len(sample)


def test_whole_turns_go_from_the_end_first():
    sample = sample_of("<image>\nQ1", "answer one", "Q2", "answer two", "Q3", "answer three")
    third_user = sample.turns[-2]
    result = fit_to_budget(sample, 50, third_user.start + 49 + 5)
    assert result.keep == third_user.start  # ends right after the second reply
    assert result.dropped_turns == 2 and not result.partial_turn
    assert [t for t in result.labels if t != IGNORE_INDEX] == [
        t for t in sample.labels[: third_user.start] if t != IGNORE_INDEX
    ]
    assert result.labels[-1] == TOKENIZER.eos_id  # the kept reply keeps its end marker


def test_a_long_first_reply_is_cut_inside_the_reply():
    sample = sample_of("<image>\nDescribe.", "word " * 100)
    reply = sample.turns[-1]
    result = fit_to_budget(sample, 20, reply.start + 19 + 30)
    assert result.truncated and result.partial_turn
    assert result.length == reply.start + 19 + 30
    assert 0 < result.keep - reply.start < reply.end - reply.start
    assert sum(label != IGNORE_INDEX for label in result.labels) > 0
    assert result.turns[-1].end == result.keep


def test_image_spans_are_never_cut():
    sample = sample_of(
        "<image>\nFirst image.", "one", "And <image> this one?", "two", "More", "three"
    )
    full = fit_to_budget(sample, 64, 100_000).length
    for max_length in range(1, full + 3):
        result = fit_to_budget(sample, 64, max_length)
        if result.dropped:
            continue
        assert result.length <= max_length
        assert not any(span.start < result.keep < span.end for span in sample.image_spans)
        assert len(result.image_spans) == sum(
            span.end <= result.keep for span in sample.image_spans
        )


def test_an_image_that_does_not_fit_takes_the_answer_with_it():
    sample = sample_of("Look: <image>", "A cat.", sample_id="coco-42")
    result = fit_to_budget(sample, 576, sample.image_spans[0].start + 100)
    assert result.dropped and result.drop_reason is DropReason.ANSWER_CUT
    assert result.keep == 0 and result.input_ids == ()
    assert "sample 'coco-42'" in result.detail and "max_length=" in result.detail


def test_answer_less_samples_are_reported_for_the_caller_to_count():
    fits = sample_of("Hi", "Hello")
    too_long = sample_of("a very long question " * 20, "short", sample_id="long")
    prompt = render(SPHINX, conversation("Hi", None), TOKENIZER, sample_id="prompt")
    results = [fit_to_budget(s, [], 200) for s in (fits, too_long, prompt)]
    assert [r.dropped for r in results] == [False, True, True]
    assert Counter(r.drop_reason for r in results if r.dropped) == {
        DropReason.ANSWER_CUT: 1,
        DropReason.NO_ANSWER: 1,
    }


def test_min_answer_tokens():
    sample = sample_of("Question?", "A long enough answer.")
    reply_start = sample.labels.index(100 + ord(" "))
    assert not fit_to_budget(sample, [], reply_start + 3, min_answer_tokens=3).dropped
    assert fit_to_budget(sample, [], reply_start + 3, min_answer_tokens=4).dropped


def test_bad_arguments_name_the_sample():
    sample = sample_of("<image>", "x", sample_id="bad")
    with pytest.raises(ValueError, match="sample 'bad': 2 visual token counts given for 1"):
        fit_to_budget(sample, [1, 2], 100)
    with pytest.raises(ValueError, match="sample 'bad': max_length"):
        fit_to_budget(sample, 1, 0)
    with pytest.raises(ValueError, match="sample 'bad': visual token counts must be >= 1"):
        fit_to_budget(sample, 0, 100)


SHORT_SYSTEM = replace(VICUNA_V1, system_prompt="Be brief.")


@st.composite
def samples(draw):
    exchanges = draw(st.integers(1, 4))
    turns = []
    for _ in range(exchanges):
        words = draw(st.lists(st.sampled_from(["cat", "<image>", "box", "\n", "é"]), max_size=6))
        turns += [" ".join(words), draw(st.text("abc .", min_size=1, max_size=40)) + "x"]
    return sample_of(*turns, template=SHORT_SYSTEM)


@settings(max_examples=150, deadline=None)
@given(sample=samples(), visual=st.integers(1, 80), data=st.data())
def test_budget_invariants(sample, visual, data):
    full_length = fit_to_budget(sample, visual, 10**9).length
    first_label = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    answer_fits = first_label + 1 + (visual - 1) * len(sample.image_spans)
    lengths = st.integers(1, full_length + 5) | st.integers(answer_fits, full_length + 5)
    max_length = data.draw(lengths, label="max_length")
    result = fit_to_budget(sample, visual, max_length)
    if result.dropped:
        assert result.keep == 0 and result.drop_reason is DropReason.ANSWER_CUT
        return
    assert result.length <= max_length
    assert not any(span.start < result.keep < span.end for span in sample.image_spans)
    assert any(label != IGNORE_INDEX for label in result.labels)
    extra = visual - 1  # each one-token placeholder grows to `visual` tokens
    whole_reply_fits = any(
        turn.role == "assistant"
        and turn.end + extra * sum(span.end <= turn.end for span in sample.image_spans)
        <= max_length
        for turn in sample.turns
    )
    assert result.partial_turn == (not whole_reply_fits and result.keep < len(sample))


def test_label_texts_of_a_truncated_reply_read_as_its_beginning():
    sample = sample_of("Q", "The quick brown fox")
    reply_start = sample.labels.index(100 + ord(" "))
    result = fit_to_budget(sample, [], reply_start + 9)
    kept = [t for t in result.labels if t != IGNORE_INDEX]
    assert TOKENIZER.decode_text(kept, sequence_start=False) == " The quic"
    assert label_texts(sample, TOKENIZER) == [" The quick brown fox</s>"]
