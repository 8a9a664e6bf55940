"""Chat templates: for every built-in template, with a real SentencePiece vocabulary (LLaMA-like,
dummy prefix) and a byte-level BPE trained here, the labels decode to exactly the replies and
their end markers, the ids decode to exactly the rendered text, images land where `<image>` was,
and every malformed conversation raises an error that names the sample."""

from __future__ import annotations

import importlib.resources
import random
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sphinx_mllm.data.templates import (
    BUILTIN_TEMPLATES,
    CHATML,
    IGNORE_INDEX,
    LLAMA2_CHAT,
    PLAIN,
    SPHINX,
    VICUNA_V1,
    ChatTemplate,
    ConversationError,
    as_text_tokenizer,
    decode_sample,
    label_texts,
    render,
)
from sphinx_mllm.data.templates.base import BOS, EOS

IMAGE = 32_000  # one past the SentencePiece vocabulary, as SPHINX appends its image token
BOX = "<p>dog</p> [0.10,0.20,0.30,0.40;0.55,0.21,0.70,0.90]"
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhere is the dog? Answer with a box."},
    {"from": "gpt", "value": BOX},
    {"from": "human", "value": "Combien de chiens ? 数一数。 Naïve café 😀"},
    {"from": "gpt", "value": "2 dogs, 3.5 m apart; 東京 {eos} </p>\n  indented 42"},
]
SPECIAL_STRINGS = ("<s>", "</s>", "<|im_start|>", "<|im_end|>")

# -- tokenizers ------------------------------------------------------------------------------


def _sentencepiece():
    sentencepiece = pytest.importorskip("sentencepiece")
    model = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    with importlib.resources.as_file(model) as path:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))


def _training_lines(count: int = 400) -> list[str]:
    words = ["the", "a", "dog", "cat", "person", "image", "box", "left", "right", "answer"]
    words += ["what", "is", "where", "how", "many", "red", "table", "region", "coordinate"]
    words += ["Human", "Assistant", "USER", "ASSISTANT", "INST", "SYS", "im_start", "im_end"]
    rng = random.Random(0)
    lines = []
    for index in range(count):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        if index % 3 == 0:
            box = ",".join(f"{rng.random():.2f}" for _ in range(4))
            line += f" <p>{rng.choice(words)}</p> [{box}]\n###"
        if index % 5 == 0:
            line += " café 東京 naïve 😀 12,345.67 [INST] <<SYS>>"
        lines.append(line)
    return lines


def _byte_level_bpe():
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_lines(), trainer)
    return tokenizer


@pytest.fixture(scope="module", params=["sentencepiece", "byte_bpe"])
def tokenizer(request, sentencepiece_model, bpe_model):
    """(adapter, raw decode of ids without image ids, the text that raw decode must give)."""
    if request.param == "sentencepiece":
        adapter = as_text_tokenizer(sentencepiece_model)

        def raw_decode(ids):
            return sentencepiece_model.decode(list(ids))

        def raw_text(text):  # SentencePiece decodes control tokens (BOS, EOS) to nothing
            for special in ("<image>", "<s>", "</s>"):
                text = text.replace(special, "")
            return text

    else:
        adapter = as_text_tokenizer(bpe_model, bos_token="<s>", eos_token="</s>")

        def raw_decode(ids):
            return bpe_model.decode(list(ids), skip_special_tokens=False)

        def raw_text(text):
            return text.replace("<image>", "")

    return adapter, raw_decode, raw_text


# -- expectations ----------------------------------------------------------------------------


def expected_replies(template: ChatTemplate, conversation, adapter) -> list[str]:
    end = template.end_marker.replace(EOS, adapter.token_text(adapter.eos_id))
    return [
        template.reply_lead + message["value"] + end
        for message in conversation
        if message["from"] in ("gpt", "assistant") and message["value"] is not None
    ]


def check_sample(template, conversation, tokenizer, **options):
    adapter, raw_decode, raw_text = tokenizer
    sample = render(template, conversation, adapter, image_token=IMAGE, sample_id="s", **options)
    assert len(sample.input_ids) == len(sample.labels)
    assert label_texts(sample, adapter) == expected_replies(template, conversation, adapter)
    assert decode_sample(sample, adapter) == sample.text
    in_image = {p for span in sample.image_spans for p in range(span.start, span.end)}
    assert raw_decode([t for p, t in enumerate(sample.input_ids) if p not in in_image]) == (
        raw_text(sample.text)
    )
    for position, (token, label) in enumerate(zip(sample.input_ids, sample.labels, strict=True)):
        assert label in (IGNORE_INDEX, token)
        assert (token == IMAGE) == (position in in_image)
        if label != IGNORE_INDEX:
            assert any(t.role == "assistant" and t.start <= position < t.end for t in sample.turns)
    for span in sample.image_spans:  # the tokens before an image read as the text before it
        before = decode_sample(_prefix(sample, span.start), adapter)
        assert sample.text.startswith(before + template.image_text)
    return sample


def _prefix(sample, end):
    spans = tuple(span for span in sample.image_spans if span.end <= end)
    return replace(sample, input_ids=sample.input_ids[:end], image_spans=spans)


# -- every template, both tokenizers ---------------------------------------------------------


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES.values(), ids=BUILTIN_TEMPLATES)
def test_labels_and_text_round_trip(template, tokenizer):
    sample = check_sample(template, CONVERSATION, tokenizer, num_images=1)
    assert len(sample.image_spans) == 1
    assert [turn.role for turn in sample.turns][-4:] == ["user", "assistant"] * 2
    assert sample.turns[-1].end == len(sample)


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES.values(), ids=BUILTIN_TEMPLATES)
def test_a_visual_token_count_reserves_a_span(template, tokenizer):
    sample = check_sample(template, CONVERSATION, tokenizer, image_token_count=7)
    (span,) = sample.image_spans
    assert span.length == 7
    assert sample.input_ids[span.start : span.end] == (IMAGE,) * 7


GOLDEN = {
    "sphinx": (
        "<s>A chat between a curious human and an artificial intelligence assistant. The "
        "assistant gives helpful, detailed, and polite answers to the human's questions.\n\n"
        "### Human: <image>\nq1\n### Assistant: a1\n### Human: q2\n### Assistant: a2\n###"
    ),
    "llama2_chat": (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nq1 [/INST] a1 </s>"
        "<s>[INST] q2 [/INST] a2 </s>"
    ),
    "vicuna_v1": (
        "<s>A chat between a curious user and an artificial intelligence assistant. The "
        "assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
    ),
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nq1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
        "<|im_start|>assistant\na2<|im_end|>\n"
    ),
    "plain": "<s><image>a1</s>a2</s>",
}


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES.values(), ids=BUILTIN_TEMPLATES)
def test_rendered_text_is_the_reference_format(template, tokenizer):
    turns = [("human", "<image>\nq1"), ("gpt", "a1"), ("human", "q2"), ("gpt", "a2")]
    conversation = [{"from": role, "value": value} for role, value in turns]
    if template.name in ("llama2_chat", "chatml"):
        conversation = [{"from": "system", "value": "Be brief."}, *conversation]
    assert check_sample(template, conversation, tokenizer).text == GOLDEN[template.name]


def test_sentencepiece_dummy_prefix_only_at_the_start(sentencepiece_model):
    sample = render(SPHINX, CONVERSATION[:2], sentencepiece_model, image_token=IMAGE)
    pieces = [sentencepiece_model.id_to_piece(t) for t in sample.input_ids if t != IMAGE]
    assert pieces[:3] == ["<s>", "▁A", "▁chat"]  # the system text starts the sequence
    human = pieces.index("▁Human")  # mid-sequence " Human" keeps its own space, no extra "▁"
    assert pieces[human - 2 : human] == ["<0x0A>", "###"]
    first_label = next(t for t in sample.labels if t != IGNORE_INDEX)
    assert sentencepiece_model.id_to_piece(first_label) == "▁<"  # the space glued to the reply


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES.values(), ids=BUILTIN_TEMPLATES)
def test_generation_prompt_is_a_prefix_of_the_training_sample(template, tokenizer):
    adapter = tokenizer[0]
    prompt = render(template, [*CONVERSATION[:3], _gpt(None)], adapter, image_token=IMAGE)
    full = render(template, CONVERSATION, adapter, image_token=IMAGE)
    assert full.input_ids[: len(prompt)] == prompt.input_ids
    last = prompt.turns[-1]
    assert last.role == "assistant"
    assert set(prompt.labels[last.start :]) <= {IGNORE_INDEX}
    assert prompt.text.endswith(template.assistant_prefix)


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES.values(), ids=BUILTIN_TEMPLATES)
def test_every_reply_ends_where_generation_stops(template):
    end = template.end_marker
    assert EOS in end or any(end.endswith(stop) for stop in template.stop_strings)


def test_implicit_images_follow_the_template(tokenizer):
    adapter = tokenizer[0]
    conversation = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A dog."}]
    sphinx = render(SPHINX, conversation, adapter, image_token=IMAGE, num_images=1)
    assert sphinx.image_positions == (1,)  # straight after BOS, as SPHINX was trained
    vicuna = render(VICUNA_V1, conversation, adapter, image_token=IMAGE, num_images=1)
    assert "USER: <image>\nWhat is it?" in vicuna.text
    plain = render(PLAIN, conversation, adapter, image_token=IMAGE, num_images=1)
    assert plain.text == "<s><image>A dog.</s>"


def test_user_and_assistant_roles_and_a_system_turn(tokenizer):
    adapter = tokenizer[0]
    conversation = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    sample = render(SPHINX, conversation, adapter)
    assert sample.text.startswith("<s>Answer in French.\n\n### Human: Hi")
    assert [turn.role for turn in sample.turns] == ["system", "user", "assistant"]


def test_hugging_face_tokenizer_gives_the_same_ids(bpe_model):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe_model,
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    direct = as_text_tokenizer(bpe_model, bos_token="<s>", eos_token="</s>")
    for template in BUILTIN_TEMPLATES.values():
        ours = render(template, CONVERSATION, hf, image_token=IMAGE)
        assert ours == render(template, CONVERSATION, direct, image_token=IMAGE)
        assert label_texts(ours, hf) == expected_replies(template, CONVERSATION, direct)


def test_a_metaspace_tokenizer_gets_the_same_treatment_as_sentencepiece():
    """A second dummy-prefix tokenizer (tokenizers' Metaspace), bare and wrapped by Hugging Face:
    pieces in the middle of the sequence are encoded behind the anchor."""
    tokenizers = pytest.importorskip("tokenizers")
    texts = [m["value"] for m in CONVERSATION] + [
        render(template, CONVERSATION, CharLevel(), image_token=IMAGE).text
        for template in BUILTIN_TEMPLATES.values()
    ]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(prepend_scheme="first")
    tokenizer.decoder = tokenizers.decoders.Metaspace(prepend_scheme="first")
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=sorted(set("".join(texts))),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_lines() + texts, trainer)
    adapter = as_text_tokenizer(tokenizer, bos_token="<s>", eos_token="</s>")
    assert adapter.adds_prefix_space
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>"
    )
    assert as_text_tokenizer(hf).adds_prefix_space
    for template in BUILTIN_TEMPLATES.values():
        sample = render(template, CONVERSATION, adapter, image_token=IMAGE)
        assert decode_sample(sample, adapter) == sample.text
        assert label_texts(sample, adapter) == expected_replies(template, CONVERSATION, adapter)
        assert render(template, CONVERSATION, hf, image_token=IMAGE) == sample


class CharLevel:
    """A `TextTokenizer` with one id per character, to get rendered texts without a vocabulary."""

    bos_id, eos_id = 1, 2

    def encode_text(self, text, *, sequence_start):
        return [ord(character) + 10 for character in text]

    def decode_text(self, ids, *, sequence_start):
        return "".join(chr(token_id - 10) for token_id in ids)

    def special_token_id(self, text):
        return None

    def is_special(self, token_id):
        return token_id in (1, 2)

    def token_text(self, token_id):
        return {1: "<s>", 2: "</s>"}[token_id]


# -- hypothesis ------------------------------------------------------------------------------

SNIPPETS = [
    BOX,
    "0.55",
    "12,345.67",
    "\n###",
    " Human:",
    "{eos}",
    "{message}",
    "[INST]",
    "  ",
    "\n",
]
text_strategy = st.lists(
    st.one_of(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="▁"), max_size=12),
        st.sampled_from(SNIPPETS),
    ),
    max_size=4,
).map("".join)
reply_strategy = text_strategy.filter(lambda text: text.strip())


@st.composite
def conversations(draw):
    exchanges = draw(st.integers(1, 3))
    conversation = []
    for index in range(exchanges):
        question = draw(text_strategy)
        if index == 0 and draw(st.booleans()):
            question = draw(st.sampled_from(["<image>\n{}", "{}\n<image>"])).format(question)
        conversation.append({"from": "human", "value": question})
        conversation.append({"from": "gpt", "value": draw(reply_strategy)})
    return conversation


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES.values(), ids=BUILTIN_TEMPLATES)
@settings(max_examples=60, deadline=None)
@given(conversation=conversations())
def test_any_conversation_round_trips(template, tokenizer, conversation):
    texts = [message["value"] for message in conversation]
    # The BPE vocabulary reads these as special tokens: covered by an error test.
    assume(not any(special in text for text in texts for special in SPECIAL_STRINGS))
    assume(not any("<image>" in text for text in texts[1::2]))  # an error case, tested below
    sample = check_sample(template, conversation, tokenizer)
    shorter = render(template, conversation[:2], tokenizer[0], image_token=IMAGE)
    assert sample.input_ids[: len(shorter)] == shorter.input_ids  # turns tokenise on their own


# -- errors ----------------------------------------------------------------------------------


def _human(value):
    return {"from": "human", "value": value}


def _gpt(value):
    return {"from": "gpt", "value": value}


@pytest.mark.parametrize(
    ("conversation", "options", "problem"),
    [
        ([_human("a"), _human("b"), _gpt("c")], {}, "from 'user' where 'assistant' was expected"),
        ([_gpt("a"), _human("b")], {}, "where 'user' was expected"),
        ([_human("a")], {}, "ends with a user message"),
        ([_human("a"), _gpt("")], {}, "is empty"),
        ([_human("a"), _gpt(" \n ")], {}, "is empty"),
        ([_human("a"), _gpt("see <image>")], {}, r"message 1 \(assistant\) holds the image"),
        ([{"from": "system", "value": "<image>"}, _human("a"), _gpt("b")], {}, "system message"),
        ([_human("a"), _gpt("b"), {"from": "system", "value": "x"}], {}, "must come first"),
        ([_human("<image><image>"), _gpt("b")], {"num_images": 1}, "2 image placeholders"),
        ([_human("<image>"), _gpt("b")], {"image_token": None}, "no image_token"),
        ([{"from": "bot", "value": "a"}], {}, "role 'bot'"),
        ([_human(3), _gpt("b")], {}, "int value"),
        ([_human(None), _gpt("b")], {}, "has no value"),
        ([_human("a"), _gpt(None), _human("b"), _gpt("c")], {}, "has no value"),
        ([], {}, "no user or assistant"),
    ],
    ids=[
        "not_alternating",
        "starts_with_assistant",
        "ends_with_user",
        "empty_reply",
        "blank_reply",
        "image_in_reply",
        "image_in_system",
        "late_system",
        "two_images_one_expected",
        "no_image_token",
        "unknown_role",
        "not_text",
        "user_without_value",
        "early_generation_prompt",
        "empty",
    ],
)
def test_malformed_conversations_raise_naming_the_sample(
    conversation, options, problem, sentencepiece_model
):
    options = {"image_token": IMAGE, **options}
    with pytest.raises(ConversationError, match=f"^sample 'bad-7': .*{problem}") as error:
        render(SPHINX, conversation, sentencepiece_model, sample_id="bad-7", **options)
    assert error.value.sample_id == "bad-7"


def test_text_that_is_a_special_token_is_refused(bpe_model):
    adapter = as_text_tokenizer(bpe_model, bos_token="<s>", eos_token="</s>")
    conversation = [_human("a"), _gpt("the end </s> and more")]
    with pytest.raises(ConversationError, match=r"sample 'x'.*special token\(s\) '</s>'"):
        render(VICUNA_V1, conversation, adapter, sample_id="x")


def test_text_sentencepiece_cannot_spell_is_refused(sentencepiece_model):
    with pytest.raises(ConversationError, match=r"sample 'x'.*cannot encode 'a▁b"):
        render(CHATML, [_human("a"), _gpt("a\u2581b")], sentencepiece_model, sample_id="x")


def test_a_template_needing_eos_with_a_tokenizer_without_one(bpe_model):
    for template, which in ((LLAMA2_CHAT, "bos"), (replace(VICUNA_V1, add_bos=False), "eos")):
        expected = rf"sample 'x'.*needs the {which.upper()} token.*{which}_token="
        with pytest.raises(ConversationError, match=expected):
            render(template, [_human("a"), _gpt("b")], bpe_model, sample_id="x")


def test_plain_has_no_system_turn(sentencepiece_model):
    conversation = [{"from": "system", "value": "x"}, _human("a"), _gpt("b")]
    with pytest.raises(ConversationError, match="'plain' has no place for a system message"):
        render(PLAIN, conversation, sentencepiece_model, sample_id="x")


def test_unsupported_tokenizer_and_bad_templates():
    with pytest.raises(TypeError, match="Unsupported tokenizer object"):
        as_text_tokenizer(object())
    with pytest.raises(ValueError, match="exactly once"):
        ChatTemplate(
            name="t", summary="", user_template="no slot", assistant_prefix="", end_marker=""
        )
    with pytest.raises(ValueError, match="cannot hold"):
        ChatTemplate(
            name="t",
            summary="",
            user_template="{message}",
            assistant_prefix="",
            end_marker=BOS + "{message}",
        )


def test_builtin_templates_are_registered():
    from sphinx_mllm.data import CHAT_TEMPLATES, get_chat_template

    if not all(name in CHAT_TEMPLATES for name in BUILTIN_TEMPLATES):
        pytest.skip("entry points of sphinx_mllm_chat_templates not declared/installed yet")
    for name, template in BUILTIN_TEMPLATES.items():
        assert get_chat_template(name) is template
