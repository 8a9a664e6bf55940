"""Real-size presets on the meta device, against the wrapped library's own model of the same
configuration: equal parameter counts, and the published SPHINX token shapes."""

import open_clip
import pytest
import timm
import torch
import transformers

from sphinx_mllm.encoders import create_encoder


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def open_clip_visual(model_name: str) -> torch.nn.Module:
    """open_clip's own CLIP model of a registered config, built on the meta device (its
    create_model initialises on the CPU first, which takes 18 s for convnext_xxlarge here)."""
    with torch.device("meta"):
        return open_clip.CLIP(**open_clip.get_model_config(model_name)).visual


def tokens_at(encoder, size):
    return tuple(encoder(torch.empty(1, 3, size, size, device="meta")).tokens.shape[1:])


def test_clip_vit_l14_is_openai_vit_l14_with_257_tokens_of_1024():
    encoder = create_encoder("clip_vit_l14", device="meta")
    reference = open_clip_visual("ViT-L-14")
    assert count(encoder) == count(reference) == 303_966_208
    assert tokens_at(encoder, 224) == (257, 1024)
    assert encoder.grid_size(224) == (16, 16)


def test_clip_vit_l14_336_has_577_tokens():
    encoder = create_encoder("clip_vit_l14_336", device="meta")
    assert count(encoder) == count(open_clip_visual("ViT-L-14-336"))
    assert tokens_at(encoder, 336) == (577, 1024)


def test_clip_convnext_xxlarge_gives_an_8x8_grid_of_3072_at_256():
    encoder = create_encoder("clip_convnext_xxlarge", device="meta")
    reference = open_clip_visual("convnext_xxlarge")
    assert count(encoder) == count(reference) == 846_543_744
    output = encoder(torch.empty(1, 3, 256, 256, device="meta"))
    assert output.grid == (8, 8)
    assert tuple(output.grid_tokens.shape[1:]) == (64, 3072)
    assert output.leading_token and encoder.num_tokens(256) == 65


def test_convnext_xxlarge_trunk_holds_what_sphinx_checkpoints_store():
    """The timm trunk of open_clip's ConvNeXt-XXL without its head projection: the 378 tensors
    and 843,398,016 parameters LLaMA2-Accessory stores under `llma.openclip_convnext_xxl.`."""
    encoder = create_encoder("convnext_xxlarge_trunk", device="meta")
    trunk = open_clip_visual("convnext_xxlarge").trunk
    trunk.reset_classifier(0, global_pool="")
    assert encoder.model.state_dict().keys() == trunk.state_dict().keys()
    assert len(encoder.model.state_dict()) == 378
    assert count(encoder) == count(trunk) == 843_398_016
    assert tokens_at(encoder, 256) == (65, 3072)


def test_dinov2_vitg14_gives_257_tokens_of_1536():
    encoder = create_encoder("dinov2_vitg14", device="meta")
    with torch.device("meta"):
        reference = timm.create_model("vit_giant_patch14_dinov2", img_size=224, num_classes=0)
    assert count(encoder) == count(reference) == 1_134_769_664
    assert tokens_at(encoder, 224) == (257, 1536)


@pytest.mark.parametrize(
    ("name", "timm_name", "tokens"),
    [
        ("dinov2_vitl14", "vit_large_patch14_dinov2", (257, 1024)),
        ("dinov2_vitb14", "vit_base_patch14_dinov2", (257, 768)),
        ("dinov2_vitg14_reg4", "vit_giant_patch14_reg4_dinov2", (257, 1536)),
    ],
)
def test_other_dinov2_presets(name, timm_name, tokens):
    encoder = create_encoder(name, device="meta")
    with torch.device("meta"):
        reference = timm.create_model(timm_name, img_size=224, num_classes=0)
    assert count(encoder) == count(reference)
    assert tokens_at(encoder, 224) == tokens


def test_siglip_so400m_gives_729_tokens_of_1152():
    encoder = create_encoder("siglip_so400m14_384", device="meta")
    with torch.device("meta"):
        reference = timm.create_model("vit_so400m_patch14_siglip_384", num_classes=0)
    assert count(encoder) == count(reference)
    assert tokens_at(encoder, 384) == (729, 1152)


def test_blip2_qformer_has_the_opt_2_7b_shape_and_32_queries_of_768():
    encoder = create_encoder("blip2_qformer_opt2_7b", device="meta")
    with torch.device("meta"):
        reference = transformers.Blip2Model(transformers.Blip2Config())
    vision_and_qformer = (
        count(reference) - count(reference.language_model) - count(reference.language_projection)
    )
    assert count(encoder) == vision_and_qformer == 985_952_256 + 105_137_664 + 32 * 768
    assert encoder.model.vision_model.config.hidden_size == 1408
    assert encoder.model.vision_model.config.num_hidden_layers == 39
    assert tokens_at(encoder, 224) == (32, 768)


def test_hf_clip_vit_l14_336_is_llavas_576_tokens():
    encoder = create_encoder("hf_clip_vit_l14_336", device="meta")
    config = transformers.CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    with torch.device("meta"):
        reference = transformers.CLIPVisionModel(config)
    assert count(encoder) == count(reference)
    assert tokens_at(encoder, 336) == (576, 1024)
    # the same tower as open_clip's ViT-L-14-336 but without the projection
    open_clip_tower = open_clip_visual("ViT-L-14-336")
    assert count(encoder) == count(open_clip_tower) - open_clip_tower.proj.numel()
