"""SphinxProcessor: one rule for where visual tokens go, shared by training and generation."""

import dataclasses

import pytest
import torch
from PIL import Image

from sphinx_mllm.data.templates import BUILTIN_TEMPLATES, IGNORE_INDEX
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.config import ConfigError
from sphinx_mllm.pipeline.processor import SphinxProcessor
from tests.pipeline.conftest import tiny_config

PHOTO = Image.new("RGB", (48, 36), (200, 40, 40))
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat colour is it?"},
    {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "And its shape?"},
    {"from": "gpt", "value": "A square."},
]


@pytest.fixture(scope="module")
def demo():
    return build_model("demo").processor


def _variant(processor, template, placement):
    return SphinxProcessor(
        processor.tokenizer,
        template,
        processor.splitter,
        tokens_per_view=processor.tokens_per_view,
        image_token_id=processor.image_token_id,
        placement=placement,
        splitter_spec=processor.splitter_spec,
    )


def _reply_starts(labels):
    """The position of the first label of each reply."""
    labelled = (labels != IGNORE_INDEX).tolist()
    return [i for i, on in enumerate(labelled) if on and (i == 0 or not labelled[i - 1])]


@pytest.mark.parametrize("placement", ["placeholder", "prefix", "after_question"])
@pytest.mark.parametrize("template", sorted(BUILTIN_TEMPLATES))
def test_the_generation_prompt_is_the_training_sequence_up_to_each_answer(
    demo, template, placement
):
    processor = _variant(demo, BUILTIN_TEMPLATES[template], placement)
    # `plain` (captions) renders no user text: its replies would run together
    conversation = CONVERSATION[:2] if template == "plain" else CONVERSATION
    training = processor([conversation], [[PHOTO]])
    ids = training.input_ids[0].tolist()
    starts = _reply_starts(training.labels[0])
    assert len(starts) == len(conversation) // 2
    for start, turns in zip(starts, (conversation[:1], conversation[:3]), strict=False):
        prompt = processor([turns], [[PHOTO]], generation=True)
        assert prompt.input_ids[0].tolist() == ids[:start]
        assert prompt.attention_mask.all()
    assert ids.count(processor.image_token_id) == processor.num_visual_tokens(PHOTO.size) == 67


def test_prefix_placement_puts_the_images_after_bos_and_deletes_the_image_text(demo):
    prefix = _variant(demo, BUILTIN_TEMPLATES["vicuna_v1"], "prefix")
    ids = prefix([CONVERSATION], [[PHOTO]]).input_ids[0].tolist()
    bos = demo.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1 : 1 + 67] == [demo.image_token_id] * 67
    text = demo.tokenizer.decode(ids[1 + 67 :])
    assert "USER: What colour is it? ASSISTANT: Red." in text  # stripped, as Accessory does
    placeholder = _variant(demo, BUILTIN_TEMPLATES["vicuna_v1"], "placeholder")
    ids = placeholder([CONVERSATION], [[PHOTO]]).input_ids[0].tolist()
    at = ids.index(demo.image_token_id)
    assert demo.tokenizer.decode(ids[:at]).endswith("USER: ")  # where `<image>` was written
    assert demo.tokenizer.decode(ids[at + 67 :]).startswith("\nWhat colour is it?")


def test_after_question_placement_puts_each_image_after_its_question(demo):
    after = _variant(demo, BUILTIN_TEMPLATES["vicuna_v1"], "after_question")
    ids = after([CONVERSATION], [[PHOTO]]).input_ids[0].tolist()
    at = ids.index(demo.image_token_id)
    assert demo.tokenizer.decode(ids[:at]).endswith("USER: What colour is it?\n")
    assert ids[at : at + 67] == [demo.image_token_id] * 67
    assert demo.tokenizer.decode(ids[at + 67 :]).startswith(" ASSISTANT: Red.")
    # several images, and a prompt that names none: each after its message's text
    turns = [
        {"from": "human", "value": "<image> left, <image> right: which is red?"},
        {"from": "gpt", "value": "The left."},
    ]
    assert after.messages(turns)[0]["value"] == "left,  right: which is red?\n<image>\n<image>"
    bare = [{"role": "user", "content": "What colour is it?"}]
    prompt = after.messages(bare, generation=True, num_images=1)
    assert prompt[0]["content"] == "What colour is it?\n<image>" and bare[0]["content"][-1] == "?"
    assert after.messages(bare) == bare  # no image: nothing moves


def test_a_prompt_without_image_text_gets_the_template_slot(demo):
    turns = [{"from": "human", "value": "What colour is it?"}]
    slot = demo([turns], [[PHOTO]], generation=True).input_ids[0].tolist()
    assert slot[1 : 1 + 67] == [demo.image_token_id] * 67  # the SPHINX template: after BOS


def test_training_inputs_pad_right_and_prompts_left(demo):
    conversations = [CONVERSATION[:2], [{"from": "human", "value": "Hi"}, *CONVERSATION[1:2]]]
    training = demo(conversations, [[PHOTO], []])
    assert training.attention_mask[0].all() and not training.attention_mask[1, -1]
    assert training.images_per_row == [1, 0] and len(training.pixel_values) == 1
    prompt = demo([c[:1] for c in conversations], [[PHOTO], []], generation=True)
    assert prompt.attention_mask[:, -1].all() and not prompt.attention_mask[1, 0]
    assert prompt.labels is None and set(prompt) == {"input_ids", "attention_mask", "pixel_values"}


def test_the_views_decide_the_visual_token_count(demo):
    views = demo.preprocess(PHOTO)
    assert views.shape == (1, 3, 64, 64) and 0 <= float(views.min()) <= float(views.max()) <= 1
    assert demo.tokens_for_views(views) == demo.num_visual_tokens() == 67
    tiles = torch.zeros(5, 3, 64, 64)
    expected = demo.tokens_per_view["global"] + 4 * demo.tokens_per_view["tile"]
    assert demo.tokens_for_views(tiles) == expected


def test_bad_calls_name_the_problem(demo):
    with pytest.raises(ValueError, match="2 image lists for 1 conversations"):
        demo([CONVERSATION], [[PHOTO], [PHOTO]])
    with pytest.raises(TypeError, match="list of conversations"):
        demo(CONVERSATION)
    with pytest.raises(ValueError, match=r"placement must be one of"):
        _variant(demo, demo.template, "after")
    with pytest.raises(ValueError, match="1 image placeholder"):
        demo.expand([1, demo.image_token_id, 5], None, [67, 67])
    no_text = build_model(tiny_config()).processor
    with pytest.raises(ValueError, match="no tokenizer"):
        no_text([CONVERSATION], [[PHOTO]])


def test_save_and_load_keep_every_setting_and_a_custom_template(demo, tmp_path):
    custom = dataclasses.replace(
        BUILTIN_TEMPLATES["vicuna_v1"], name="mine", system_prompt="Be brief.", stop_strings=("!",)
    )
    processor = _variant(demo, custom, "prefix")
    processor.save_pretrained(tmp_path / "processor")
    loaded = SphinxProcessor.from_pretrained(tmp_path / "processor")
    assert loaded.template == custom and loaded.placement == "prefix"
    assert loaded.tokens_per_view == processor.tokens_per_view
    first, second = processor([CONVERSATION], [[PHOTO]]), loaded([CONVERSATION], [[PHOTO]])
    assert torch.equal(first.input_ids, second.input_ids)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.pixel_values[0], second.pixel_values[0])


def test_a_checkpoint_carries_its_processor(tmp_path):
    from sphinx_mllm.pipeline.model import SphinxModel

    model = build_model("demo", placement="prefix")
    model.processor.template = dataclasses.replace(model.processor.template, stop_strings=("!",))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SphinxModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.processor.template.stop_strings == ("!",)
    assert loaded.processor.placement == "prefix"


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_or_resized():
    config = tiny_config(**{"tokenizer.source": "demo", "llm.overrides": {"vocab_size": 704}})
    with pytest.raises(ConfigError) as raised:
        build_model(config)
    message = str(raised.value)
    assert "747 tokens" in message and "704 rows" in message and "resize_embeddings" in message
    model = build_model(config.replace(**{"tokenizer.resize_embeddings": True}))
    assert model.llm.get_input_embeddings().num_embeddings == 747
    batch = model.processor([CONVERSATION], [[Image.new("RGB", (32, 32))]])
    assert torch.isfinite(model(**batch).loss)
