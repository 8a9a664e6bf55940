"""The built-in model presets (entry-point group `sphinx_mllm_model_presets`): each a factory
returning a `ModelConfig`.

| preset | encoders | LLM | visual tokens per image |
|---|---|---|---|
| sphinx | CLIP ViT-L/14, ConvNeXt-XXL, DINOv2-g/14, BLIP-2 Q-Former | LLaMA-2-13B | 291 |
| sphinx-1k | same, global view + 2x2 sub-images | LLaMA-2-13B | 1455 |
| sphinx-2k | same, global view + 3x3 sub-images | LLaMA-2-13B | 2910 |
| sphinx-tiny | ConvNeXt-XXL (512), DINOv2-g/14 | TinyLlama-1.1B | 259 |
| llava-1.5 | CLIP ViT-L/14-336 (penultimate layer, no CLS), mlp2x_gelu | a 7B Llama | 576 |
| demo | a 64 px ResNet (stride 8) and a ConvNeXt, channel-mixed | a 4-layer Llama, width 128 | 67 |

SPHINX presets place visual tokens right after BOS (their released code) and use the SPHINX chat
template; LLaVA-1.5 places them at the `<image>` placeholder with the Vicuna v1 template. The
`demo` model trains from scratch on a CPU (its encoders are not frozen) and uses the byte-level
demo tokenizer, so it can train on any LLaVA-format data.

SPHINX presets decode as SPHINX's released code does (`sphinx_generation`): sampling at
temperature 0.1 with top-p 0.75; evaluation gives short-answer tasks 10 new tokens and REC 30.
The tasks are named as sphinx-data's task builders name them in each record's `meta.task`:
`vqa` and `multiple_choice` (answered with a word, a phrase or a letter) get 10, `rec` (one box)
gets 30; the others (captions, grounded captions, REG, conversation) keep evaluation's
reference-length rule. `llava-1.5` and `demo` decode greedily.
"""

from __future__ import annotations

from sphinx_mllm.mixer import SPHINX_STACKS, StackRecipe
from sphinx_mllm.pipeline.config import (
    EncoderSpec,
    GenerationDefaults,
    LLMConfig,
    ModelConfig,
    TokenizerConfig,
    VisionConfig,
)


def vision_from_recipe(recipe: StackRecipe) -> VisionConfig:
    """A sphinx-mixer stack recipe as the vision part of a model config."""
    return VisionConfig(
        encoders=[
            EncoderSpec(name, image_size=side, resize=resize)
            for name, side, resize in recipe.encoders
        ],
        splitter=recipe.splitter,
        splitter_options=dict(recipe.splitter_options),
        mixer=recipe.mixer,
        mixer_options=dict(recipe.mixer_options),
    )


def sphinx_generation() -> GenerationDefaults:
    """SPHINX's released decoding (the module docstring says how the tasks were chosen)."""
    return GenerationDefaults(
        temperature=0.1,
        top_p=0.75,
        task_max_new_tokens={"vqa": 10, "multiple_choice": 10, "rec": 30},
    )


def _sphinx(variant: str, llm: str) -> ModelConfig:
    return ModelConfig(
        vision=vision_from_recipe(SPHINX_STACKS[variant]),
        llm=LLMConfig(llm),
        template="sphinx",
        placement="prefix",
        dtype="bfloat16",
        name=variant,
        generation=sphinx_generation(),
    )


def sphinx() -> ModelConfig:
    """SPHINX: four encoders mixed at 224 px, LLaMA-2-13B; 291 visual tokens, ~16.4B parameters."""
    return _sphinx("sphinx", "llama2_13b")


def sphinx_1k() -> ModelConfig:
    """SPHINX-1k: a global view and 2x2 sub-images of a 448 px image; 1455 visual tokens."""
    return _sphinx("sphinx-1k", "llama2_13b")


def sphinx_2k() -> ModelConfig:
    """SPHINX-2k: a global view and 3x3 sub-images of a 672 px image; 2910 visual tokens."""
    return _sphinx("sphinx-2k", "llama2_13b")


def sphinx_tiny() -> ModelConfig:
    """SPHINX-Tiny: ConvNeXt-XXL at 512 and DINOv2-g/14, TinyLlama-1.1B; 259 visual tokens."""
    return _sphinx("sphinx-tiny", "tinyllama_1_1b")


def llava_1_5() -> ModelConfig:
    """LLaVA-1.5-7B's shape: CLIP ViT-L/14-336 penultimate layer without CLS, mlp2x_gelu, a 7B
    Llama (Vicuna-7B's architecture); 576 visual tokens at the `<image>` placeholder."""
    return ModelConfig(
        vision=VisionConfig(
            encoders=[EncoderSpec("hf_clip_vit_l14_336")],
            splitter="single",
            splitter_options={"base_size": 336},
            mixer="sequence_concat",
            mixer_options={"projector": "mlp2x_gelu"},
        ),
        llm=LLMConfig("llama2_7b", overrides={"vocab_size": 32064, "pad_token_id": 32001}),
        tokenizer=TokenizerConfig(image_token_id=32000),
        template="vicuna_v1",
        placement="placeholder",
        dtype="float16",
        name="llava-1.5",
    )


DEMO_WIDTH = 128
DEMO_VOCAB = 768  # the demo tokenizer's 747 tokens, rounded up to a multiple of 64


def demo() -> ModelConfig:
    """A 1.7M-parameter SPHINX that trains from scratch on a CPU: a small ResNet kept at output
    stride 8 (an 8x8 grid whose every token sees a whole object; BatchNorm, which trains this
    convnet from scratch much faster than a per-sample norm) and a tiny ConvNeXt, mixed
    channel-wise with fixed 2D sine-cosine positions on the grid; a 4-layer Llama of width 128
    initialised at the scale its width needs; the byte-level demo tokenizer; 67 visual tokens
    per image."""
    return ModelConfig(
        vision=VisionConfig(
            encoders=[
                EncoderSpec(
                    "timm",
                    options={
                        "model_name": "resnet18",
                        "layers": [1, 1, 1, 1],
                        "channels": [32, 64, 128, 128],
                        "stem_width": 32,
                        "output_stride": 8,
                        "input_size": [64, 64],
                        "frozen": False,
                    },
                ),
                EncoderSpec("tiny_timm_convnet", options={"frozen": False}),
            ],
            splitter="single",
            splitter_options={"base_size": 64},
            mixer="channel_concat",
            mixer_options={"projector": "mlp2x_gelu", "grid_positions": "sincos"},
        ),
        llm=LLMConfig(
            "tiny_llama",
            overrides={
                "vocab_size": DEMO_VOCAB,
                "hidden_size": DEMO_WIDTH,
                "intermediate_size": 2 * DEMO_WIDTH,
                # HF's default (0.02) suits width 4096; at width 128 it leaves attention logits
                # near zero and the model long on the plateau of answering from the prior
                "initializer_range": 0.06,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "max_position_embeddings": 1024,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 0,
            },
        ),
        tokenizer=TokenizerConfig(source="demo"),
        template="sphinx",
        placement="placeholder",
        dtype="float32",
        name="demo",
    )
