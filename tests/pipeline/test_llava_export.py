"""Exporting to Hugging Face LLaVA: `LlavaForConditionalGeneration` loads the export and gives the
same logits; import then export gives back the same model; models LLaVA cannot express are
refused by name."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration, Qwen2Config

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.llava_export import LlavaExportError, to_llava
from sphinx_mllm.pipeline.llava_import import from_llava
from sphinx_mllm.pipeline.model import SphinxModel
from tests.command_line import sphinx_pipeline
from tests.pipeline.conftest import tiny_config
from tests.pipeline.test_llava_import import (
    TEXT,
    TOLERANCE,
    TOWER,
    pixels,
    prompts,
    save_llava,
)

TINY_TOWER = {"model_type": "clip_vision_model", **TOWER}


def _logit_difference(model, hf_model, batch=2):
    ids = prompts(model.num_visual_tokens(), batch)
    encoder = next(iter(model.visual.encoders.values()))
    _, processed = pixels(batch, (encoder.mean, encoder.std))
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, pixel_values=processed).logits
        ours = model(ids, processed, normalized=True).logits
    return (ours - theirs).abs().max().item()


def test_import_then_export_gives_back_the_same_llava(tmp_path):
    original = save_llava(
        tmp_path / "hf", text_config=Qwen2Config(**{**TEXT, "tie_word_embeddings": True})
    )
    model = from_llava(tmp_path / "hf")
    to_llava(model, tmp_path / "again")
    exported = LlavaForConditionalGeneration.from_pretrained(tmp_path / "again").eval()
    theirs, ours = original.state_dict(), exported.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[name], ours[name]) for name in theirs)
    for field in ("image_token_id", "vision_feature_layer", "vision_feature_select_strategy"):
        assert getattr(exported.config, field) == getattr(original.config, field), field
    assert exported.config.text_config.tie_word_embeddings
    assert _logit_difference(model, exported) <= TOLERANCE


def test_a_model_composed_here_exports_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(
        **{
            "vision.encoders": [
                {"name": "hf_vision", "options": {"config": TINY_TOWER, "feature_layer": -2,
                                                  "keep_cls": False}}
            ],
            "vision.mixer": "sequence_concat",
            "vision.mixer_options": {"projector": "mlp2x_gelu"},
            "tokenizer.image_token_id": 250,
        }
    )  # fmt: skip
    model = build_model(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    outcome = sphinx_pipeline("export-llava", tmp_path / "ckpt", tmp_path / "hf")
    assert outcome.status == 0, outcome.stderr
    assert "16 visual tokens per image" in outcome.stdout
    exported = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert exported.config.vision_feature_select_strategy == "default"
    assert _logit_difference(model, exported) <= TOLERANCE
    again = sphinx_pipeline("export-llava", tmp_path / "ckpt", tmp_path / "hf")
    assert again.status == 2 and "pass --force" in again.stderr
    assert (
        sphinx_pipeline("export-llava", tmp_path / "ckpt", tmp_path / "hf", "--force").status == 0
    )
    foreign = sphinx_pipeline("export-llava", tmp_path / "ckpt", tmp_path, "--force")
    assert foreign.status == 2 and (tmp_path / "ckpt" / "config.json").is_file()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({}, "one vision tower; this model mixes 2 encoders"),
        (
            {
                "vision.encoders": [{"name": "tiny_clip_vit", "image_size": 32}],
                "vision.mixer": "sequence_concat",
            },
            "vision tower is a transformers vision model (hf_vision)",
        ),
        (
            {
                "vision.encoders": [{"name": "hf_vision", "options": {"config": TINY_TOWER}}],
                "vision.mixer": "channel_concat",
            },
            "this model's mixer is a ChannelConcatMixer",
        ),
        (
            {
                "vision.encoders": [{"name": "hf_vision", "options": {"config": TINY_TOWER}}],
                "vision.mixer": "sequence_concat",
                "vision.mixer_options": {"projector": "linear_ln"},
            },
            "projector is Linear, GELU, Linear with biases (mlp2x_gelu); this model's is "
            "'linear_ln'",
        ),
        (
            {
                "vision.encoders": [{"name": "hf_vision", "options": {"config": TINY_TOWER}}],
                "vision.mixer": "sequence_concat",
                "vision.mixer_options": {"projector": "mlp2x_gelu", "wrap_views": True},
            },
            "adds view tokens or separators",
        ),
        (
            {
                "vision.encoders": [{"name": "hf_vision", "options": {"config": TINY_TOWER}}],
                "vision.mixer": "sequence_concat",
                "vision.splitter": "global_grid",
                "vision.splitter_options": {"base_size": 32, "grid": 2},
            },
            "one view per image",
        ),
    ],
)
def test_what_llava_cannot_express_is_named(tmp_path, changes, named):
    model = build_model(tiny_config(**changes))
    with pytest.raises(LlavaExportError, match=named.replace("(", r"\(").replace(")", r"\)")):
        to_llava(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_demo_checkpoint_is_refused_on_the_command_line(tmp_path):
    build_model("demo").save_pretrained(tmp_path / "ckpt")
    outcome = sphinx_pipeline("export-llava", tmp_path / "ckpt", tmp_path / "hf")
    assert outcome.status == 2
    assert outcome.error_lines == [
        "sphinx-pipeline: Hugging Face LLaVA has one vision tower; this model mixes 2 encoders: "
        "timm[resnet18] (TimmEncoder), tiny_timm_convnet (TimmEncoder)"
    ]
    assert SphinxModel.from_pretrained(tmp_path / "ckpt").num_visual_tokens() == 67


def test_the_llava_preset_maps_onto_llava_tensor_for_tensor():
    """The real-size `llava-1.5` preset, built on the meta device: every tensor has its place
    and shape in `LlavaForConditionalGeneration` (writing it would need 14 GB)."""
    from sphinx_mllm.pipeline.llava_export import _llava_tensors, llava_config

    model = build_model("llava-1.5", device="meta")
    config = llava_config(model)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    assert config.image_seq_length == model.num_visual_tokens() == 576
    with torch.device("meta"):
        expected = LlavaForConditionalGeneration(config).state_dict()
    tensors = _llava_tensors(model, expected, config)
    assert set(tensors) == set(expected)
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in model.parameters())
