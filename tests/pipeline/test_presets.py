"""Model presets on the meta device: parameter counts and visual tokens per image."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_mllm.pipeline import list_model_presets
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.description import describe, format_description
from sphinx_mllm.pipeline.tokenizers import demo_tokenizer

# LLaMA-2-13B 13,015,864,320 + the four SPHINX encoders and the mixer 3,409,203,072.
SPHINX_PARAMETERS = 16_425_067_392
EXPECTED = {
    "sphinx": (291, SPHINX_PARAMETERS),
    "sphinx-1k": (1455, SPHINX_PARAMETERS),
    "sphinx-2k": (2910, SPHINX_PARAMETERS),
    # TinyLlama-1.1B 1,100,048,384 + ConvNeXt-XXL + DINOv2-g + mixer
    "sphinx-tiny": (259, 3_090_809_216),
    # llava-hf/llava-1.5-7b-hf: 7,063,427,072 parameters
    "llava-1.5": (576, 7_063_427_072),
}


def test_every_builtin_preset_is_registered():
    assert set(EXPECTED) | {"demo"} <= set(list_model_presets())


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_real_size_presets_on_the_meta_device(preset):
    tokens, parameters = EXPECTED[preset]
    model = build_model(preset, device="meta")
    assert model.num_visual_tokens() == tokens
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model.device.type == "meta"


def test_describe_reports_counts_per_stage():
    description = describe("sphinx")
    assert description["visual_tokens_per_image"] == 291
    stages = description["parameters"]["trainable_by_stage"]
    assert description["parameters"]["total"] == SPHINX_PARAMETERS
    assert stages["full"] == SPHINX_PARAMETERS
    assert stages["align"] == 32_808_960  # SPHINX's projections and start/end vectors
    assert stages["pretrain"] == 13_015_864_320 + 32_808_960
    # LoRA rank 16 on each block's q, k, v, o (5120 -> 5120) and gate, up, down (5120 <-> 13824)
    per_block = 16 * (4 * (5120 + 5120) + 3 * (5120 + 13824))
    assert stages["lora"] == 32_808_960 + 40 * per_block
    assert "clip_convnext_xxlarge" in format_description(description)


def test_demo_preset_is_small_and_its_tokenizer_fits_its_vocabulary():
    model = build_model("demo")
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert len(model.tokenizer) <= model.llm.config.vocab_size
    assert model.tokenizer.convert_ids_to_tokens(model.image_token_id) == "<image>"
    assert all(encoder.frozen is False for encoder in model.visual.encoders.values())


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_demo_tokenizer_round_trips_any_text(text):
    tokenizer = demo_tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
