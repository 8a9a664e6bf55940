"""Checks on the Accessory-release fixtures themselves: key sets against the libraries that define
them, the fairscale split, the files, and the plain-torch CLIP/DINOv2/LLaMA forwards against
open_clip, timm and transformers."""

import functools
import json

import pytest
import sentencepiece
import timm
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from transformers import Blip2Config, Blip2Model, LlamaConfig, LlamaForCausalLM

from tests.pipeline.accessory_reference import (
    CLIP_EMBED,
    DIM,
    IMAGE_SIZE,
    IMAGE_WORDS,
    LLAMA_TYPES,
    VIEWS,
    clip_vit_tokens,
    dinov2_hub_pos_embed,
    dinov2_tokens,
    ffn_width,
    reference_logits,
    reference_visual_tokens,
    shard_weights,
    split_dim,
    tiny_accessory_params,
    tiny_accessory_shapes,
    tiny_accessory_weights,
    write_accessory_release,
)

ENCODERS = ("llma.clip.", "llma.openclip_convnext_xxl.", "llma.dinov2_vitg14.", "llma.qformer.")
LLM_KEYS = ("tok_embeddings", "layers", "norm", "output")
CLIP_VISION = {"width": 128, "layers": 2, "head_width": 64, "patch_size": 14, "image_size": 224}


@functools.cache
def tiny_weights(llama_type: str) -> dict[str, torch.Tensor]:
    return tiny_accessory_weights(llama_type)


def floats(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v.float() for k, v in weights.items() if k.startswith(prefix)}


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def stripped(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, tuple[int, ...]]:
    return {
        k.removeprefix(prefix): tuple(v.shape) for k, v in weights.items() if k.startswith(prefix)
    }


def tiny_timm_dinov2() -> torch.nn.Module:
    return timm.create_model(
        "vit_giant_patch14_dinov2",
        pretrained=False,
        num_classes=0,
        embed_dim=128,
        depth=2,
        num_heads=2,
        img_size=224,
        mlp_ratio=(688 + 0.5) / 128,  # fc1 = int(128 * ratio) = 688 without float truncation
    ).eval()


@functools.cache
def library_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """Each encoder's key set as its own library builds it at the tiny sizes."""
    clip = CLIP(
        embed_dim=CLIP_EMBED,
        vision_cfg=CLIPVisionCfg(**CLIP_VISION),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    clip.transformer = None  # llama_ens.py l.300
    convnext = timm.create_model(
        "convnext_xxlarge",
        pretrained=False,
        num_classes=0,
        depths=(1, 1, 2, 1),
        dims=(16, 32, 48, 96),
    )
    dinov2 = {
        name.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): shape
        for name, shape in shapes_of(tiny_timm_dinov2()).items()
    }
    dinov2 |= {"mask_token": (1, 128), "pos_embed": (1, 37 * 37 + 1, 128)}
    blip2 = Blip2Model(
        Blip2Config(
            vision_config={
                "hidden_size": 176,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 352,
                "image_size": 224,
                "patch_size": 14,
                "qkv_bias": True,
            },
            qformer_config={
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 256,
                "cross_attention_frequency": 2,
            },
            text_config={
                "model_type": "opt",
                "hidden_size": 16,
                "ffn_dim": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "vocab_size": 64,
                "word_embed_proj_dim": 16,
            },
            num_query_tokens=32,
        )
    )
    qformer = {k: v for k, v in shapes_of(blip2).items() if not k.startswith("language_")}
    return {
        "llma.clip.": shapes_of(clip),
        "llma.openclip_convnext_xxl.": shapes_of(convnext),
        "llma.dinov2_vitg14.": dinov2,
        "llma.qformer.": qformer,
    }


@pytest.mark.parametrize("llama_type", LLAMA_TYPES)
def test_key_set_is_the_libraries_key_set(llama_type):
    weights = tiny_weights(llama_type)
    light = llama_type.endswith("_light")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert all(k.startswith("llma.") for k in weights)
    assert {k: tuple(v.shape) for k, v in weights.items()} == tiny_accessory_shapes(llama_type)

    present = {p for p in ENCODERS if any(k.startswith(p) for k in weights)}
    absent = {"llma.clip.", "llma.qformer."} if light else set()
    assert present == set(ENCODERS) - absent
    assert any(k.startswith("llma.qformer_proj.") for k in weights) is not light
    for prefix in present:
        assert stripped(weights, prefix) == library_shapes()[prefix], prefix

    params = tiny_accessory_params(llama_type)
    kv = (params["n_kv_heads"] or params["n_heads"]) * DIM // params["n_heads"]
    llm = {k for k in weights if k.split(".")[1] in LLM_KEYS}
    assert len(llm) == 3 + 9 * params["n_layers"]
    assert weights["llma.layers.1.attention.wk.weight"].shape == (kv, DIM)
    assert (
        weights["llma.layers.0.feed_forward.w1.weight"].shape
        == (ffn_width(params), DIM)
        == (192, 64)
    )
    assert weights["llma.visual_proj.0.weight"].shape == (DIM, 224 if light else 352)
    assert weights["llma.start_img"].shape == weights["llma.end_img"].shape == (1, 1, DIM)
    if not light:
        assert weights["llma.qformer_proj.0.weight"].shape == (DIM, 128)
        assert weights["llma.clip.logit_scale"].shape == ()
        key_bias = weights["llma.qformer.vision_model.encoder.layers.1.self_attn.qkv.bias"]
        assert not key_bias[176:352].any() and key_bias[:176].any() and key_bias[352:].any()


@pytest.mark.parametrize("llama_type", ["llama_ens5", "llama_ens_light"])
@pytest.mark.parametrize("world", [1, 2])
def test_shards_concatenate_back_to_the_full_weights(llama_type, world):
    weights = tiny_weights(llama_type)
    shards = shard_weights(weights, world)
    split = {k for k in weights if split_dim(k) is not None}
    assert len(split) == 2 + 7 * tiny_accessory_params(llama_type)["n_layers"]
    assert split_dim("llma.tok_embeddings.weight") == 1 and split_dim("llma.output.weight") == 0
    assert split_dim("llma.dinov2_vitg14.blocks.0.mlp.w3.weight") is None
    for key, full in weights.items():
        pieces = [shard[key] for shard in shards]
        dim = split_dim(key)
        if dim is None:
            assert all(torch.equal(p, full) and p.data_ptr() != full.data_ptr() for p in pieces)
        else:
            assert all(p.shape[dim] == full.shape[dim] // world for p in pieces), key
            assert torch.equal(torch.cat(pieces, dim=dim), full), key
    if world == 2:
        assert shards[1]["llma.output.weight"].shape == (16000, DIM)
        assert shards[1]["llma.tok_embeddings.weight"].shape == (32000, DIM // 2)


def test_clip_matches_open_clip_visual_tower():
    from open_clip.model import _build_vision_tower

    tower = _build_vision_tower(CLIP_EMBED, dict(CLIP_VISION), quick_gelu=False).eval()
    assert isinstance(tower.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    weights = floats(tiny_weights("llama_ens"), "llma.")
    tower.load_state_dict(floats(weights, "clip.visual."))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tower.ln_post(tower.transformer(tower._embeds(x)))
        got = clip_vit_tokens(weights, x, prefix="clip.visual.")
    assert got.shape == (2, 257, 128)
    assert (got - expected).abs().max() <= 1e-5


def test_dinov2_matches_timm_given_the_same_pos_embed():
    weights = floats(tiny_weights("llama_ens_light"), "llma.")
    state = {
        k.removeprefix("dinov2_vitg14.")
        .replace("mlp.w12", "mlp.fc1")
        .replace("mlp.w3", "mlp.fc2"): v
        for k, v in weights.items()
        if k.startswith("dinov2_vitg14.") and not k.endswith("mask_token")
    }
    hub_pos = dinov2_hub_pos_embed(state["pos_embed"], 16, 16)
    state["pos_embed"] = hub_pos
    vit = tiny_timm_dinov2()
    vit.load_state_dict(state)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = vit.forward_features(x)
        got = dinov2_tokens(weights, x, prefix="dinov2_vitg14.")
    assert got.shape == (2, 257, 128)
    assert (got - expected).abs().max() <= 1e-5

    # the hub's scale_factor resize is not the size= resize of timm and HF
    grid = weights["dinov2_vitg14.pos_embed"][:, 1:].reshape(1, 37, 37, 128).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(16, 16), mode="bicubic").flatten(2).transpose(1, 2)
    assert torch.equal(hub_pos[:, :1], weights["dinov2_vitg14.pos_embed"][:, :1])
    assert (hub_pos[:, 1:] - by_size).abs().max() > 1e-2


def hf_llama(weights: dict[str, torch.Tensor], params: dict, permute: bool) -> LlamaForCausalLM:
    dim, heads = params["dim"], params["n_heads"]
    kv_heads, head_dim = params["n_kv_heads"] or heads, dim // heads

    def rotary(w: torch.Tensor, n: int) -> torch.Tensor:
        if not permute:
            return w
        return w.view(n, head_dim // 2, 2, dim).transpose(1, 2).reshape(n * head_dim, dim)

    names = {
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w3": "mlp.up_proj",
        "feed_forward.w2": "mlp.down_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    w = {k: v.float() for k, v in weights.items()}
    state = {
        "model.embed_tokens.weight": w["llma.tok_embeddings.weight"],
        "model.norm.weight": w["llma.norm.weight"],
        "lm_head.weight": w["llma.output.weight"],
    }
    for n in range(params["n_layers"]):
        src, dst = f"llma.layers.{n}.", f"model.layers.{n}."
        state[dst + "self_attn.q_proj.weight"] = rotary(w[src + "attention.wq.weight"], heads)
        state[dst + "self_attn.k_proj.weight"] = rotary(w[src + "attention.wk.weight"], kv_heads)
        state |= {f"{dst}{hf}.weight": w[f"{src}{meta}.weight"] for meta, hf in names.items()}
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=params["vocab_size"],
            hidden_size=dim,
            intermediate_size=ffn_width(params),
            num_hidden_layers=params["n_layers"],
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            rms_norm_eps=params["norm_eps"],
            rope_theta=float(params["rope_theta"]),
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )
    )
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("llama_type", ["llama_ens", "llama_ens_light"])  # MHA and GQA
def test_meta_rope_llama_matches_hf_llama_with_permuted_qk(llama_type):
    weights, params = tiny_weights(llama_type), tiny_accessory_params(llama_type)
    ids = torch.randint(3, 32000, (2, 40), generator=torch.Generator().manual_seed(5))
    ids[:, 0] = 1
    got = reference_logits(weights, params, llama_type, None, ids)
    with torch.no_grad():
        permuted = hf_llama(weights, params, permute=True)(ids).logits
        unpermuted = hf_llama(weights, params, permute=False)(ids).logits
    assert got.shape == (2, 40, 32000)
    assert (got - permuted).abs().max() <= 1e-4
    assert (got - unpermuted).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("llama_type", "layout"), [("llama_ens", "model"), ("llama_ens5_light", "flat")]
)
def test_release_directory_loads_weights_only_with_mmap(tmp_path, llama_type, layout):
    full = write_accessory_release(tmp_path, llama_type, world=2, layout=layout)
    paths = sorted(tmp_path.glob("consolidated.*.model.pth"))
    assert [p.name for p in paths] == [f"consolidated.0{r}-of-02.model.pth" for r in (0, 1)]
    shards = [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in paths]
    if layout == "model":
        assert all(set(shard) == {"model"} for shard in shards)
        shards = [shard["model"] for shard in shards]
    for key, tensor in full.items():
        dim = split_dim(key)
        merged = shards[0][key] if dim is None else torch.cat([s[key] for s in shards], dim=dim)
        assert merged.dtype == torch.bfloat16 and torch.equal(merged, tensor), key

    config_text = (tmp_path / "config.json").read_text()
    assert json.loads(config_text) == tiny_accessory_params(llama_type)
    assert '"ffn_dim_multiplier": null' in config_text and '"rope_scaling": null' in config_text
    assert ('"n_kv_heads": null' in config_text) is (llama_type == "llama_ens")
    assert json.loads((tmp_path / "meta.json").read_text()) == {"llama_type": llama_type}
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert (tokenizer.vocab_size(), tokenizer.bos_id(), tokenizer.eos_id()) == (32000, 1, 2)


@pytest.mark.parametrize("llama_type", LLAMA_TYPES)
def test_reference_forward_layout(llama_type):
    weights, params = tiny_weights(llama_type), tiny_accessory_params(llama_type)
    size = IMAGE_SIZE[llama_type]
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(6)).clamp(-2, 2)
    ids = torch.tensor([[1, 415, 3114, 29871, 13]])
    logits = reference_logits(weights, params, llama_type, image, ids)
    assert logits.shape == (1, 5, 32000) and torch.isfinite(logits).all()
    assert 0.3 < logits.std() < 3
    assert (logits - reference_logits(weights, params, llama_type, None, ids)).abs().max() > 0.1

    tokens = reference_visual_tokens(weights, params, llama_type, image)
    assert tokens.shape == (1, IMAGE_WORDS[llama_type], DIM)
    per_view = IMAGE_WORDS[llama_type] // VIEWS[llama_type]
    assert per_view == (259 if llama_type.endswith("_light") else 291)
    views = tokens.view(VIEWS[llama_type], per_view, DIM)
    assert torch.equal(views[:, 0], weights["llma.start_img"][0].float().expand(len(views), -1))
    assert torch.equal(views[:, -1], weights["llma.end_img"][0].float().expand(len(views), -1))
    assert 0.5 < views[:, 1:-1].std() < 2

    fp32_resize = reference_visual_tokens(weights, params, llama_type, image, fp16_resize=False)
    assert 0 < (fp32_resize - tokens).abs().max() < 0.1
    with pytest.raises(ValueError, match=str(size)):
        reference_visual_tokens(weights, params, llama_type, image[..., :-2, :-2])


def test_ens5_views_are_the_global_view_then_the_quadrants():
    weights, params = tiny_weights("llama_ens5"), tiny_accessory_params("llama_ens5")
    assert tiny_accessory_shapes("llama_ens") == tiny_accessory_shapes("llama_ens5")
    image = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(7)).clamp(-2, 2)
    tokens = reference_visual_tokens(weights, params, "llama_ens5", image)
    global_view = F.interpolate(image.half(), size=(224, 224), mode="bicubic").float()
    quadrants = [image[..., :224, :224], image[..., :224, 224:], image[..., 224:, :224]]
    views = torch.cat([global_view, *quadrants, image[..., 224:, 224:]])
    singles = reference_visual_tokens(weights, params, "llama_ens", views)
    assert (tokens.view(5, 291, DIM) - singles).abs().max() <= 1e-5
