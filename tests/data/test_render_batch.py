"""Batched rendering: `render_batch` gives exactly the samples `render` gives, one by one, for
every built-in template and both tokenizers of `test_templates`; it calls the tokenizer once per
kind of piece, keeps template ids per tokenizer, and raises `render`'s error for the first bad
conversation. The adapter's batch methods equal their one-text versions."""

from __future__ import annotations

import random

import pytest

from sphinx_mllm.data.templates import (
    BUILTIN_TEMPLATES,
    CHATML,
    SPHINX,
    VICUNA_V1,
    ChatTemplate,
    ConversationError,
    TokenizationError,
    TokenizerAdapter,
    as_text_tokenizer,
    render,
    render_batch,
)
from sphinx_mllm.data.templates import batch as batch_module
from tests.data.test_templates import (
    BOX,
    CONVERSATION,
    IMAGE,
    SNIPPETS,
    CharLevel,
)

WORDS = ["the", "dog", "Human:", "###", "ünïcode", "東京", "😀", "3.5", "42", "  ", "\n", "x", BOX]
WORDS += SNIPPETS


@pytest.fixture(scope="module", params=["sentencepiece", "byte_bpe"])
def adapter(request, sentencepiece_model, bpe_model):
    if request.param == "sentencepiece":
        return as_text_tokenizer(sentencepiece_model)
    return as_text_tokenizer(bpe_model, bos_token="<s>", eos_token="</s>")


def _text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice([" ", "", "\n"]) + rng.choice(WORDS) for _ in range(words))


def random_conversations(count: int, seed: int, *, system: bool) -> list[list[dict]]:
    """Conversations of 1-4 exchanges: images first, last or absent, system turns, generation
    prompts, unicode, box text and template look-alikes."""
    rng = random.Random(seed)
    result = []
    for _ in range(count):
        turns = []
        if system and rng.random() < 0.3:
            turns.append({"from": "system", "value": _text(rng, rng.randint(1, 6))})
        for exchange in range(rng.randint(1, 4)):
            question = _text(rng, rng.randint(0, 8))
            if exchange == 0 and rng.random() < 0.5:
                question = rng.choice(["<image>\n{}", "{}\n<image>", "{} <image> {}"]).format(
                    question, question
                )
            turns.append({"from": rng.choice(["human", "user"]), "value": question})
            reply = ""
            while not reply.strip():
                reply = _text(rng, rng.randint(1, 10))
            turns.append({"from": rng.choice(["gpt", "assistant"]), "value": reply})
        if rng.random() < 0.2:
            turns[-1]["value"] = None  # a generation prompt
        result.append(turns)
    return result


@pytest.fixture
def no_fallback(monkeypatch):
    """Fail if `render_batch` hands any conversation to `render`: every check passed in batch."""

    def refuse(*args, sample_id, **kwargs):
        raise AssertionError(f"sample {sample_id!r} was rendered one by one")

    monkeypatch.setattr(batch_module, "render", refuse)


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES.values(), ids=BUILTIN_TEMPLATES)
def test_batch_equals_one_by_one(template, adapter, no_fallback):
    conversations = random_conversations(150, seed=7, system=template.has_system)
    conversations.append(CONVERSATION)
    sample_ids = [f"s{index}" for index in range(len(conversations))]
    expected = [
        render(template, conversation, adapter, image_token=IMAGE, sample_id=sample_id)
        for conversation, sample_id in zip(conversations, sample_ids, strict=True)
    ]
    batched = render_batch(
        template, conversations, adapter, image_token=IMAGE, sample_ids=sample_ids
    )
    assert batched == expected
    again = render_batch(template, conversations, adapter, image_token=IMAGE, sample_ids=sample_ids)
    assert again == expected  # with the template ids cached


@pytest.mark.parametrize("template", [SPHINX, VICUNA_V1, CHATML], ids=lambda t: t.name)
def test_batch_options_equal_one_by_one(template, adapter, no_fallback):
    conversations = [
        [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A dog."}],
        CONVERSATION,
        [{"from": "human", "value": "<image>\n<image> two"}, {"from": "gpt", "value": "Yes"}],
    ]
    num_images = [2, 1, 2]
    expected = [
        render(
            template, turns, adapter, image_token=IMAGE, image_token_count=5, num_images=count,
            sample_id=str(index),
        )
        for index, (turns, count) in enumerate(zip(conversations, num_images, strict=True))
    ]  # fmt: skip
    batched = render_batch(
        template, conversations, adapter, image_token=IMAGE, image_token_count=5,
        num_images=num_images,
    )  # fmt: skip
    assert batched == expected


def test_raw_tokenizers_and_a_plain_text_tokenizer(sentencepiece_model, no_fallback):
    conversations = random_conversations(40, seed=3, system=True)
    assert render_batch(SPHINX, conversations, sentencepiece_model, image_token=IMAGE) == [
        render(SPHINX, c, sentencepiece_model, image_token=IMAGE, sample_id=str(i))
        for i, c in enumerate(conversations)
    ]
    char_level = CharLevel()  # no batch methods: rendered one text at a time
    assert render_batch(VICUNA_V1, conversations, char_level, image_token=IMAGE) == [
        render(VICUNA_V1, c, char_level, image_token=IMAGE, sample_id=str(i))
        for i, c in enumerate(conversations)
    ]
    assert render_batch(SPHINX, [], sentencepiece_model) == []


def test_hugging_face_tokenizer_batches_give_the_same_samples(bpe_model, no_fallback):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe_model,
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    adapter = as_text_tokenizer(hf)
    for template in BUILTIN_TEMPLATES.values():
        conversations = random_conversations(40, seed=5, system=template.has_system)
        expected = [
            render(template, c, adapter, image_token=IMAGE, sample_id=str(i))
            for i, c in enumerate(conversations)
        ]
        assert render_batch(template, conversations, adapter, image_token=IMAGE) == expected


EDGE_MESSAGES = [
    "<image>", "<image><image>", "", "<image>\n", "\n<image>", "a<image>b<image>", "{0} {x}",
    "\ue000" + "0\ue001 sentinel look-alike", "}{", " Human: {message}", "<|im_start|>",
]  # fmt: skip
BRACES = ChatTemplate(
    name="braces",
    summary="template text with braces and a system prompt",
    system_template="{{sys}} {system}\n",
    system_prompt="Be {brief}.",
    user_template="{bos}Q{{1}}: {message} }}",
    assistant_prefix="A{0}:",
    reply_lead=" ",
    end_marker="{eos}",
)


def edge_conversations() -> list[list[dict]]:
    """Every edge message as a first and as a later question, with replies that hold braces."""
    result = []
    for index, message in enumerate(EDGE_MESSAGES):
        reply = {"from": "gpt", "value": f"{{{index}}} ok }}"}
        later = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yes"}]
        result.append([{"from": "human", "value": message}, reply])
        result.append([*later, {"from": "user", "value": message}, reply])
        result.append([{"from": "system", "value": message}, *later])
    return result


@pytest.mark.parametrize(
    "template", [*BUILTIN_TEMPLATES.values(), BRACES], ids=[*BUILTIN_TEMPLATES, "braces"]
)
def test_layout_plans_reproduce_edge_shapes(template, sentencepiece_model):
    """Images at the edges of messages, empty messages, braces and sentinel look-alikes in
    messages and templates: laid out by shape, they give what `render` gives (or its error)."""
    adapter = as_text_tokenizer(sentencepiece_model)
    conversations = edge_conversations()
    for images in (None, 1, 2):
        counts = [images] * len(conversations)
        expected = []
        for index, conversation in enumerate(conversations):
            try:
                expected.append(
                    render(
                        template, conversation, adapter, image_token=IMAGE, image_token_count=3,
                        num_images=images, sample_id=str(index),
                    )
                )  # fmt: skip
            except ConversationError as error:
                expected.append(str(error))
        for index in range(len(conversations)):
            try:
                got = render_batch(
                    template, conversations[index : index + 1], adapter, image_token=IMAGE,
                    image_token_count=3, num_images=counts[index : index + 1],
                    sample_ids=[str(index)],
                )[0]  # fmt: skip
            except ConversationError as error:
                got = str(error)
            assert got == expected[index], (images, conversations[index])


def test_conversations_of_one_shape_share_a_plan(sentencepiece_model):
    from sphinx_mllm.data.templates.layout import PieceBuilder
    from sphinx_mllm.data.templates.plans import LayoutPlans

    adapter = as_text_tokenizer(sentencepiece_model)
    plans = LayoutPlans(PieceBuilder(SPHINX, adapter, IMAGE, 1))
    conversations = random_conversations(60, seed=2, system=True)
    found = [plans.find(c, None) for c in conversations]
    covered = [f for f in found if f is not None]
    shapes = {id(plan) for plan, _ in covered}
    assert len(covered) >= 40 and len(shapes) < len(covered) / 2
    bad = [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]
    assert plans.find(bad, None) is None  # the general way raises its error
    assert (
        plans.find([{"from": "human", "value": "a"}, {"from": "gpt", "value": " "}], None) is None
    )
    odd = ChatTemplate(
        name="odd", summary="sentinel characters in the template",
        user_template="\ue0001\ue001 {message}", assistant_prefix=">", end_marker="{eos}",
    )  # fmt: skip
    assert not LayoutPlans(PieceBuilder(odd, adapter, IMAGE, 1)).enabled
    plain = random_conversations(20, seed=4, system=False)
    assert render_batch(odd, plain, adapter, image_token=IMAGE) == [
        render(odd, c, adapter, image_token=IMAGE, sample_id=str(i)) for i, c in enumerate(plain)
    ]


# -- batching -------------------------------------------------------------------------------


class _CountingProcessor:
    """A SentencePiece processor that records what it is asked to encode."""

    def __init__(self, processor):
        self._processor = processor
        self.calls: list[str | list[str]] = []

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def encode(self, text, *args, **kwargs):
        self.calls.append(text)
        return self._processor.encode(text, *args, **kwargs)


def test_one_batched_encode_per_kind_and_template_ids_cached(sentencepiece_model):
    processor = _CountingProcessor(sentencepiece_model)
    adapter = as_text_tokenizer(processor)
    conversations = random_conversations(30, seed=11, system=False)
    processor.calls.clear()
    first = render_batch(SPHINX, conversations, adapter, image_token=IMAGE)
    assert len(processor.calls) == 2  # the start of each sequence, and the middle pieces
    assert all(isinstance(call, list) for call in processor.calls)
    assert sum(SPHINX.system_prompt in text for text in processor.calls[0]) == 1  # once a batch
    processor.calls.clear()
    second = render_batch(SPHINX, conversations, adapter, image_token=IMAGE)
    assert second == first
    encoded = [text for call in processor.calls for text in call]
    assert not any(SPHINX.system_prompt in text for text in encoded)
    assert not any(text.endswith(SPHINX.assistant_prefix) for text in encoded)


# -- errors ---------------------------------------------------------------------------------


def _good(index):
    return [{"from": "human", "value": f"q{index}"}, {"from": "gpt", "value": f"a{index}"}]


@pytest.mark.parametrize(
    ("bad", "template", "problem"),
    [
        ([{"from": "human", "value": "a"}, {"from": "gpt", "value": " "}], SPHINX, "is empty"),
        ([{"from": "human", "value": "a"}], SPHINX, "ends with a user message"),
        (
            [{"from": "human", "value": "a"}, {"from": "gpt", "value": "a\u2581b"}],
            CHATML,
            "cannot encode 'a▁b",
        ),
    ],
    ids=["empty_reply", "ends_with_user", "unencodable_text"],
)
def test_the_first_bad_conversation_raises_as_render_does(
    bad, template, problem, sentencepiece_model
):
    conversations = [_good(0), _good(1), bad, _good(3), bad]
    ids = [f"c{index}" for index in range(len(conversations))]
    with pytest.raises(ConversationError) as one:
        render(template, bad, sentencepiece_model, sample_id="c2")
    with pytest.raises(ConversationError, match=f"^sample 'c2': .*{problem}") as batched:
        render_batch(template, conversations, sentencepiece_model, sample_ids=ids)
    assert str(batched.value) == str(one.value)
    assert batched.value.sample_id == "c2"


@pytest.mark.parametrize("backend", ["transformers", "sentencepiece", "byte_bpe"])
def test_a_chunk_of_only_invalid_conversations_raises_as_render_does(
    backend, sentencepiece_model, bpe_model
):
    """The tokenizer is not called on an empty batch (transformers' fast tokenizers raised an
    IndexError there): the error is `render`'s, naming the sample."""
    if backend == "transformers":
        transformers = pytest.importorskip("transformers")
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=bpe_model, bos_token="<s>", eos_token="</s>"
        )
    else:
        tokenizer = sentencepiece_model if backend == "sentencepiece" else bpe_model
    bad = [{"from": "gpt", "value": "an answer first"}]
    with pytest.raises(ConversationError) as one:
        render(SPHINX, bad, tokenizer, image_token=IMAGE, sample_id="s7")
    with pytest.raises(ConversationError) as batched:
        render_batch(SPHINX, [bad, bad], tokenizer, image_token=IMAGE, sample_ids=["s7", "s8"])
    assert str(batched.value) == str(one.value) and batched.value.sample_id == "s7"


def test_text_read_as_a_special_token_is_refused_in_a_batch(bpe_model):
    adapter = as_text_tokenizer(bpe_model, bos_token="<s>", eos_token="</s>")
    bad = [{"from": "human", "value": "a"}, {"from": "gpt", "value": "the end </s> and more"}]
    with pytest.raises(ConversationError, match=r"sample 'x1'.*special token\(s\) '</s>'"):
        render_batch(VICUNA_V1, [_good(0), bad], adapter, sample_ids=["x0", "x1"])


def test_mismatched_options_are_refused(sentencepiece_model):
    with pytest.raises(ValueError, match="sample_ids has 1 entries for 2 conversations"):
        render_batch(SPHINX, [_good(0), _good(1)], sentencepiece_model, sample_ids=["a"])
    with pytest.raises(ValueError, match="num_images has 3 entries"):
        render_batch(SPHINX, [_good(0)], sentencepiece_model, num_images=[0, 0, 0])


# -- the adapter's batch methods ------------------------------------------------------------

TEXTS = ["", "Human", " Human:", "\n###", "a\u2581b", BOX, "東京 😀", "  x", "!x", "!", "x!y"]


def _one_by_one(method, items, sequence_start):
    results = []
    for item in items:
        try:
            results.append(method(item, sequence_start=sequence_start))
        except TokenizationError as error:
            return results, str(error)
    return results, None


@pytest.mark.parametrize("sequence_start", [True, False])
def test_encode_many_and_decode_many_equal_their_one_text_versions(adapter, sequence_start):
    texts = [text for text in TEXTS if "\u2581" not in text]
    encoded = adapter.encode_many(texts, sequence_start=sequence_start)
    assert (encoded, None) == _one_by_one(adapter.encode_text, texts, sequence_start)
    decoded = adapter.decode_many(encoded, sequence_start=sequence_start)
    assert (decoded, None) == _one_by_one(adapter.decode_text, encoded, sequence_start)
    ids, round_trip = adapter.round_trip_many(texts, sequence_start=sequence_start)
    assert (ids, round_trip) == (encoded, decoded)


def test_encode_many_raises_the_error_of_the_first_text_that_fails(sentencepiece_model):
    adapter = as_text_tokenizer(sentencepiece_model)
    _, error = _one_by_one(adapter.encode_text, TEXTS, False)
    assert error is not None
    with pytest.raises(TokenizationError) as batched:
        adapter.encode_many(TEXTS, sequence_start=False)
    assert str(batched.value) == error


class _MergingBackend:
    """Characters with a dummy prefix ("▁" before the text), where "\\n" and "!" merge into one
    token: the first anchor fails before "!", the next one carries the text."""

    bos_id = eos_id = None
    special_ids = frozenset()

    def encode(self, text):
        text = "▁" + text.replace(" ", "▁")
        ids, position = [], 0
        while position < len(text):
            if text.startswith("\n!", position):
                ids.append(1)
                position += 2
            else:
                ids.append(ord(text[position]) + 10)
                position += 1
        return ids

    def decode(self, ids):
        text = "".join("\n!" if i == 1 else chr(i - 10) for i in ids).replace("▁", " ")
        return text[1:] if text.startswith(" ") else text

    def encode_many(self, texts):
        return [self.encode(text) for text in texts]

    def decode_many(self, id_lists):
        return [self.decode(ids) for ids in id_lists]

    def single_token_id(self, text):
        return None


def test_a_text_that_merges_with_the_first_anchor_takes_the_next(no_fallback):
    adapter = TokenizerAdapter(_MergingBackend(), "merging")
    assert adapter.adds_prefix_space
    texts = ["!x", "plain", "!"]
    expected = [adapter.encode_text(text, sequence_start=False) for text in texts]
    assert adapter.encode_many(texts, sequence_start=False) == expected
    ids, decoded = adapter.round_trip_many(texts, sequence_start=False)
    assert (ids, decoded) == (expected, texts)
    turns = [{"from": "human", "value": "!hi"}, {"from": "gpt", "value": "!yes"}]
    assert render_batch(CHATML, [turns], adapter) == [render(CHATML, turns, adapter, sample_id="0")]


def test_only_sentencepiece_is_trusted_to_decode_piecewise(sentencepiece_model, bpe_model):
    # SentencePiece joins its pieces' texts, so the whole-sequence check follows from the
    # per-piece ones; other decoders keep it.
    assert as_text_tokenizer(sentencepiece_model).piecewise_decoding
    assert not as_text_tokenizer(bpe_model).piecewise_decoding


@pytest.mark.parametrize("collector_on", [True, False])
def test_the_garbage_collector_state_is_restored(adapter, collector_on):
    import gc

    was_enabled = gc.isenabled()
    try:
        gc.enable() if collector_on else gc.disable()
        render_batch(SPHINX, [CONVERSATION] * 3, adapter, image_token=IMAGE)
        assert gc.isenabled() == collector_on
        with pytest.raises(ConversationError):
            render_batch(SPHINX, [[{"from": "gpt", "value": ""}]], adapter, image_token=IMAGE)
        assert gc.isenabled() == collector_on
    finally:
        gc.enable() if was_enabled else gc.disable()


def test_sentencepiece_never_encodes_text_as_a_control_piece(sentencepiece_model):
    """Why a batch may skip looking for special ids in SentencePiece's output: text that spells
    its control pieces stays text."""
    adapter = as_text_tokenizer(sentencepiece_model)
    assert not adapter.text_makes_special
    controls = [sentencepiece_model.id_to_piece(i) for i in adapter._backend.special_ids]
    assert {"<s>", "</s>"} <= set(controls)
    text = " ".join(controls) + "".join(controls) + " <unk> <pad>"
    for start in (True, False):
        assert not adapter.has_special(adapter.encode_text(text, sequence_start=start))
