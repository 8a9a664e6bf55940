"""Building encoders: directly in the requested dtype and device, frozen by default, and clear
errors for bad names and bad pixels."""

import pytest
import torch

from sphinx_mllm.core import UnknownComponentError
from sphinx_mllm.encoders import create_encoder, list_encoders


@pytest.fixture
def created_parameter_dtypes(monkeypatch):
    """The dtype of every nn.Parameter created while the fixture is active."""
    dtypes = []
    original_new = torch.nn.Parameter.__new__

    def recording_new(cls, data=None, requires_grad=True):
        if data is not None and data.is_floating_point():
            dtypes.append(data.dtype)
        return original_new(cls, data, requires_grad)

    monkeypatch.setattr(torch.nn.Parameter, "__new__", recording_new)
    return dtypes


@pytest.mark.parametrize("name", list_encoders("tiny_*"))
def test_parameters_are_created_in_bf16_never_fp32_first(name, created_parameter_dtypes):
    create_encoder(name, dtype=torch.bfloat16)
    assert created_parameter_dtypes, "no parameter was created"
    assert set(created_parameter_dtypes) == {torch.bfloat16}


def test_the_default_dtype_is_restored_after_building():
    create_encoder("tiny_clip_vit", dtype=torch.bfloat16)
    assert torch.get_default_dtype() == torch.float32


def test_an_integer_dtype_is_refused():
    with pytest.raises(ValueError, match="floating-point dtype"):
        create_encoder("tiny_clip_vit", dtype=torch.int8)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownComponentError, match=r"Did you mean: .*clip_vit_l14"):
        create_encoder("clip_vit_l41")


def test_unfreeze_then_freeze_again():
    encoder = create_encoder("tiny_dinov2")
    encoder.unfreeze().train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    encoder.freeze()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (
            torch.randn(1, 1, 32, 32),
            r"expects pixels of shape \[B, 3, H, W\], got \(1, 1, 32, 32\)",
        ),
        (torch.randn(3, 32, 32), r"expects pixels of shape \[B, 3, H, W\], got \(3, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "expects normalised floating-point pixels"),
        (torch.randn(1, 3, 48, 48), "takes 32x32 images .* got 48x48"),
    ],
)
def test_bad_pixels_get_a_clear_error(pixels, message):
    with pytest.raises(ValueError, match=message):
        create_encoder("tiny_clip_vit")(pixels)


def test_a_convnet_wants_sides_that_are_multiples_of_its_stride():
    encoder = create_encoder("tiny_clip_convnext")
    assert encoder.grid_size(96) == (3, 3)
    with pytest.raises(ValueError, match="multiples of its stride 32x32, got 80x64"):
        encoder(torch.randn(1, 3, 80, 64))


def test_a_dynamic_vit_takes_other_sizes_and_declares_their_tokens():
    encoder = create_encoder("tiny_dinov2", dynamic_img_size=True)
    assert encoder.num_tokens((70, 42)) == 1 + 5 * 3
    assert encoder(torch.randn(1, 3, 70, 42)).tokens.shape == (1, 16, 32)


def test_feature_layer_out_of_range_is_refused():
    with pytest.raises(ValueError, match="feature_layer 5 is outside its 2 layers"):
        create_encoder("tiny_clip_vit", feature_layer=5)
    with pytest.raises(ValueError, match="must index its 3 hidden states"):
        create_encoder("tiny_hf_clip", feature_layer=[-1, 7])


def test_moving_an_encoder_to_another_dtype_changes_its_tokens_dtype():
    encoder = create_encoder("tiny_hf_clip")
    assert encoder(torch.randn(1, 3, 32, 32)).tokens.dtype == torch.float32
    encoder.to(torch.bfloat16)
    assert encoder.dtype == torch.bfloat16
    assert encoder(torch.randn(1, 3, 32, 32)).tokens.dtype == torch.bfloat16


def test_architecture_overrides_scale_a_preset_down():
    """What a scaled-down converted checkpoint needs: the SPHINX presets with other sizes."""
    clip = create_encoder("clip_vit_l14", vision_cfg={"width": 128, "layers": 2}, embed_dim=32)
    assert (clip.embed_dim, len(clip.model.transformer.resblocks)) == (128, 2)
    assert tuple(clip.model.proj.shape) == (128, 32) and clip.num_tokens() == 257
    qformer = create_encoder(
        "blip2_qformer_opt2_7b",
        config={"vision_config": {"hidden_size": 176, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "intermediate_size": 64},
                "qformer_config": {"hidden_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 1, "intermediate_size": 64,
                                   "encoder_hidden_size": 176}},
    )  # fmt: skip
    assert (qformer.embed_dim, qformer.num_queries) == (64, 32)
    assert qformer.model.vision_model.config.image_size == 224  # the rest stays the preset's
    trunk = create_encoder("convnext_xxlarge_trunk", depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
    assert trunk.embed_dim == 32 and trunk.num_tokens() == 65


def test_unknown_architecture_overrides_are_named():
    with pytest.raises(ValueError, match="widht"):
        create_encoder("clip_vit_l14", vision_cfg={"widht": 128}, device="meta")
    with pytest.raises(ValueError, match="vision_confg"):
        create_encoder("blip2_qformer_opt2_7b", config={"vision_confg": {}}, device="meta")
