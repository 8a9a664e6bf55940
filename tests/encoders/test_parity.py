"""Parity with the wrapped libraries: the reference model is built by the library's own public
API, its whole checkpoint is saved to a file, our encoder loads that file through
`create_encoder(name, pretrained=path)`, and the tokens equal the library's own features."""

import open_clip
import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

from sphinx_mllm.encoders import create_encoder
from sphinx_mllm.encoders.blip2_qformer import TINY_BLIP2_CONFIG
from sphinx_mllm.encoders.open_clip_convnext import TINY_CLIP_CONVNEXT_CONFIG
from sphinx_mllm.encoders.open_clip_vit import TINY_CLIP_VIT_CONFIG

TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}


def save_checkpoint(model: torch.nn.Module, path) -> str:
    tensors = {key: value.clone() for key, value in model.state_dict().items()}  # untie
    save_file(tensors, str(path))
    return str(path)


def assert_same(actual, expected):
    """Equal up to float32 rounding: the library may take another kernel path (e.g. PyTorch's
    fused attention when autograd is off) for the same arithmetic."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def pixels(encoder, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *encoder.input_size, generator=generator)


@torch.no_grad()
def test_open_clip_vit_equals_open_clip_tokens_and_pooled_features(tmp_path):
    torch.manual_seed(1)
    reference = open_clip.CLIP(
        TINY_CLIP_VIT_CONFIG["embed_dim"], TINY_CLIP_VIT_CONFIG["vision_cfg"], TINY_TEXT
    ).eval()
    encoder = create_encoder(
        "tiny_clip_vit", save_checkpoint(reference, tmp_path / "clip.safetensors")
    )
    x = pixels(encoder)
    reference.visual.output_tokens = True
    pooled, patch_tokens = reference.visual(x)
    tokens = encoder(x).tokens
    assert_same(tokens[:, 1:], patch_tokens)
    assert_same(tokens[:, 0] @ reference.visual.proj, pooled)
    reference.visual.output_tokens = False
    projected = create_encoder("tiny_clip_vit", tmp_path / "clip.safetensors", project=True)
    assert_same(projected(x).tokens[:, 0], reference.encode_image(x))


@torch.no_grad()
def test_open_clip_vit_feature_layer_equals_open_clip_intermediates(tmp_path):
    torch.manual_seed(2)
    reference = open_clip.CLIP(
        TINY_CLIP_VIT_CONFIG["embed_dim"], TINY_CLIP_VIT_CONFIG["vision_cfg"], TINY_TEXT
    ).eval()
    path = save_checkpoint(reference, tmp_path / "clip.safetensors")
    encoder = create_encoder("tiny_clip_vit", path, feature_layer=-2, normalize=False)
    x = pixels(encoder)
    expected = reference.visual.forward_intermediates(
        x, indices=2, intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
    )
    first_block = torch.cat(
        [expected["image_intermediates_prefix"][0], expected["image_intermediates"][0]], dim=1
    )
    assert_same(encoder(x).tokens, first_block)


@torch.no_grad()
def test_open_clip_convnext_equals_the_trunk_map_after_the_head_norm(tmp_path):
    torch.manual_seed(3)
    reference = open_clip.CLIP(
        TINY_CLIP_CONVNEXT_CONFIG["embed_dim"], TINY_CLIP_CONVNEXT_CONFIG["vision_cfg"], TINY_TEXT
    ).eval()
    encoder = create_encoder(
        "tiny_clip_convnext", save_checkpoint(reference, tmp_path / "c.safetensors")
    )
    x = pixels(encoder)
    trunk = reference.visual.trunk
    feature_map = trunk.head.norm(trunk.forward_features(x))  # SPHINX: pooling and flatten removed
    grid = feature_map.flatten(2).transpose(1, 2)
    output = encoder(x)
    assert_same(output.grid_tokens, grid)
    assert_same(output.tokens[:, 0], feature_map.mean(dim=(2, 3)))
    assert output.grid == tuple(feature_map.shape[-2:])


@pytest.mark.parametrize(
    ("name", "timm_name", "options", "num_registers"),
    [
        ("tiny_dinov2", "vit_small_patch14_dinov2", {"img_size": 56}, 0),
        ("tiny_dinov2_reg4", "vit_small_patch14_reg4_dinov2", {"img_size": 56}, 4),
        ("tiny_siglip", "vit_base_patch16_siglip_224", {"img_size": 32}, None),
    ],
)
@torch.no_grad()
def test_timm_vit_equals_forward_features_without_registers(
    tmp_path, name, timm_name, options, num_registers
):
    torch.manual_seed(4)
    tiny = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
    reference = timm.create_model(timm_name, num_classes=0, **tiny, **options).eval()
    encoder = create_encoder(name, save_checkpoint(reference, tmp_path / "m.safetensors"))
    x = pixels(encoder)
    features = reference.forward_features(x)
    tokens = encoder(x).tokens
    if num_registers is None:  # SigLIP: no CLS, no registers
        assert_same(tokens, features)
    else:
        assert reference.num_prefix_tokens == 1 + num_registers
        assert_same(tokens[:, 0], features[:, 0])
        assert_same(tokens[:, 1:], features[:, 1 + num_registers :])


@torch.no_grad()
def test_timm_convnet_equals_the_head_normed_map(tmp_path):
    torch.manual_seed(5)
    reference = timm.create_model("test_convnext", num_classes=0).eval()
    encoder = create_encoder(
        "tiny_timm_convnet", save_checkpoint(reference, tmp_path / "m.safetensors")
    )
    x = pixels(encoder)
    feature_map = reference.head.norm(reference.forward_features(x))
    output = encoder(x)
    assert_same(output.grid_tokens, feature_map.flatten(2).transpose(1, 2))
    assert_same(output.tokens[:, 0], feature_map.mean(dim=(2, 3)))


HF_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


@pytest.mark.parametrize(
    ("name", "model_class", "config", "has_cls"),
    [
        (
            "tiny_hf_clip",
            transformers.CLIPVisionModel,
            transformers.CLIPVisionConfig(**HF_TINY, image_size=32, patch_size=8),
            True,
        ),
        (
            "tiny_hf_siglip",
            transformers.SiglipVisionModel,
            transformers.SiglipVisionConfig(**HF_TINY, image_size=32, patch_size=8),
            False,
        ),
        (
            "tiny_hf_dinov2",
            transformers.Dinov2Model,
            transformers.Dinov2Config(**HF_TINY, image_size=56, patch_size=14),
            True,
        ),
    ],
)
@torch.no_grad()
def test_hf_hidden_states_layers_concat_and_cls(tmp_path, name, model_class, config, has_cls):
    torch.manual_seed(6)
    reference = model_class(config).eval()
    path = save_checkpoint(reference, tmp_path / "model.safetensors")
    encoder = create_encoder(
        name, tmp_path, feature_layer=[-2, -1], keep_cls=False, final_norm=False
    )
    x = pixels(encoder)
    states = reference(pixel_values=x, output_hidden_states=True).hidden_states
    expected = torch.cat([states[-2], states[-1]], dim=-1)
    expected = expected[:, 1:] if has_cls else expected
    assert_same(encoder(x).tokens, expected)
    assert encoder.embed_dim == 64
    single = create_encoder(name, path, feature_layer=1, keep_cls=True, final_norm=False)
    assert_same(single(x).tokens, states[1])


@torch.no_grad()
def test_hf_dinov2_final_norm_equals_last_hidden_state(tmp_path):
    torch.manual_seed(7)
    config = transformers.Dinov2Config(**HF_TINY, image_size=56, patch_size=14)
    reference = transformers.Dinov2Model(config).eval()
    encoder = create_encoder(
        "tiny_hf_dinov2", save_checkpoint(reference, tmp_path / "m.safetensors")
    )
    x = pixels(encoder)
    assert_same(encoder(x).tokens, reference(pixel_values=x).last_hidden_state)


@torch.no_grad()
def test_hf_clip_loads_from_a_whole_clip_checkpoint(tmp_path):
    torch.manual_seed(8)
    vision = dict(HF_TINY, image_size=32, patch_size=8)
    text = dict(HF_TINY, vocab_size=64, max_position_embeddings=16)
    reference = transformers.CLIPModel(
        transformers.CLIPConfig(vision_config=vision, text_config=text)
    ).eval()
    encoder = create_encoder(
        "tiny_hf_clip", save_checkpoint(reference, tmp_path / "clip.safetensors")
    )
    x = pixels(encoder)
    expected = reference.vision_model(pixel_values=x).last_hidden_state
    assert_same(encoder(x).tokens, expected)


@torch.no_grad()
def test_blip2_qformer_equals_get_qformer_features(tmp_path):
    torch.manual_seed(9)
    reference = transformers.Blip2Model(transformers.Blip2Config(**TINY_BLIP2_CONFIG)).eval()
    torch.nn.init.normal_(reference.query_tokens)  # initialised to zeros; make the queries count
    reference.save_pretrained(tmp_path / "blip2")  # a Hugging Face model directory
    encoder = create_encoder("tiny_blip2_qformer", tmp_path / "blip2")
    x = pixels(encoder)
    assert_same(encoder(x).tokens, reference.get_qformer_features(x))
