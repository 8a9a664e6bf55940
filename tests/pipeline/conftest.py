"""Tiny model configs shared by the pipeline tests."""

import pytest

from sphinx_mllm.pipeline.config import EncoderSpec, LLMConfig, ModelConfig, VisionConfig


def tiny_config(placement: str = "placeholder", **changes) -> ModelConfig:
    """Two tiny encoders (a CLIP ViT and a DINOv2-shaped ViT, 4x4 grids at 32 and 56 px) mixed
    SPHINX's way, a tiny Llama without a tokenizer (image token id 256, past its vocabulary)."""
    config = ModelConfig(
        vision=VisionConfig(
            encoders=[
                EncoderSpec("tiny_clip_vit", image_size=32),
                EncoderSpec("tiny_dinov2", image_size=56),
            ],
            splitter="single",
            splitter_options={"base_size": 32},
            mixer="channel_concat",
        ),
        llm=LLMConfig("tiny_llama"),
        template="sphinx",
        placement=placement,
        name="tiny",
    )
    return config.replace(**changes) if changes else config


@pytest.fixture
def tiny():
    return tiny_config
