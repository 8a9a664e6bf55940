"""Tiny LLaMA2-Accessory SPHINX releases and the logits the released code computes on them.

Test fixtures for the Accessory importer: `write_accessory_release` writes a release directory
with the real key names, shard layout, config files and image geometry (257 grid tokens per view,
32 Q-Former queries, 224 px views) but tiny widths, and `reference_logits` is the forward pass of
A:`accessory/model/LLM/<llama_type>.py` (Alpha-VLLM/LLaMA2-Accessory @ 3777c43) in fp32 from the
stored bf16 values. The LLaMA, CLIP ViT and DINOv2 forwards are plain torch so that a parity test
does not share libraries with the converter; ConvNeXt runs timm's module and BLIP-2 transformers'
modules, as Accessory itself does. See ../shared/reference/accessory_format.md.

Casts to half before resizing. The reference resizes `image.half()` and casts back. On a bf16
image that cast is lossless; on the fp32 images here it rounds the pixels to fp16, which moves the
logits by 1e-4 to 2e-3, so a parity test must make the same choice. `fp16_resize=True` (the
default) reproduces the reference, `False` resizes in fp32. The casts are:
- llama_ens.py l.400: ConvNeXt input, nearest 224 -> 256.
- llama_ens5.py l.383: the global view, bicubic 448 -> 224; l.407: ConvNeXt input, nearest -> 256.
- llama_ens_light.py l.370: the DINOv2 input, bicubic 512 -> 224; l.373: ConvNeXt input, nearest
  512 -> 512 (an identity resize, so only the fp16 rounding remains).
- llama_ens5_light.py l.370 / l.371 / l.379: bicubic 1024 -> 224 (DINOv2 global view), -> 448
  (DINOv2 crops), -> 512 (ConvNeXt global view). The four 512 ConvNeXt crops are cut from the raw
  1024 image, not cast.
Not cast: the four 224 crops of llama_ens5 and the DINOv2 pos_embed resize (fp32, hub code).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

LLAMA_TYPES = ("llama_ens", "llama_ens5", "llama_ens_light", "llama_ens5_light")
IMAGE_SIZE = {"llama_ens": 224, "llama_ens5": 448, "llama_ens_light": 512, "llama_ens5_light": 1024}
IMAGE_WORDS = {
    "llama_ens": 291,
    "llama_ens5": 1455,
    "llama_ens_light": 259,
    "llama_ens5_light": 1295,
}
VIEWS = {"llama_ens": 1, "llama_ens5": 5, "llama_ens_light": 1, "llama_ens5_light": 5}

DIM, N_LAYERS, N_HEADS, LIGHT_KV_HEADS, VOCAB, MULTIPLE_OF = 64, 2, 4, 2, 32000, 32
CLIP_WIDTH, CLIP_LAYERS, CLIP_EMBED, CLIP_TEXT_WIDTH = 128, 2, 32, 32
CONVNEXT_DEPTHS, CONVNEXT_DIMS = (1, 1, 2, 1), (16, 32, 48, 96)
DINO_WIDTH, DINO_BLOCKS, DINO_STORED_GRID = 128, 2, 37
DINO_HIDDEN = (int(4 * DINO_WIDTH * 2 / 3) + 7) // 8 * 8  # SwiGLUFFNFused: 344
BLIP_VISION_WIDTH, BLIP_VISION_LAYERS, BLIP_VISION_HEADS, BLIP_VISION_FFN = 176, 2, 2, 352
QFORMER_WIDTH, QFORMER_LAYERS, QFORMER_HEADS, QFORMER_FFN, N_QUERIES = 128, 2, 2, 256, 32
HEAD_WIDTH = 64  # CLIP and DINOv2 heads, as in ViT-L/14 and ViT-g/14
PATCH, VIEW, GRID = 14, 224, 16

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_COLUMN_SPLIT = re.compile(
    r"llma\.(layers\.\d+\.(attention\.w[qkv]|feed_forward\.w[13])|output)\.weight"
)
_ROW_SPLIT = re.compile(r"llma\.layers\.\d+\.(attention\.wo|feed_forward\.w2)\.weight")
_LLM_ROOTS = ("tok_embeddings", "layers", "norm", "output")
_CLIP_TEXT = ("llma.clip.token_embedding", "llma.clip.positional_embedding", "llma.clip.ln_final")
_EMBEDDINGS = (
    "class_embedding",
    "positional_embedding",
    "position_embedding",
    "cls_token",
    "pos_embed",
    "mask_token",
    "query_tokens",
    "start_img",
    "end_img",
)


def _check_type(llama_type: str) -> bool:
    """Validates `llama_type`; returns whether it is a `_light` (SPHINX-Tiny) type."""
    if llama_type not in LLAMA_TYPES:
        raise ValueError(f"llama_type {llama_type!r} is not one of {LLAMA_TYPES}")
    return llama_type.endswith("_light")


def tiny_accessory_params(llama_type: str) -> dict:
    """The config.json content: `dataclasses.asdict(ModelArgs)` as released, at tiny widths.

    The light types follow the released SPHINX-Tiny config.json (337 B): GQA, `max_seq_len` 4096
    and the extra `trainable_mode` field of the light ModelArgs.
    """
    light = _check_type(llama_type)
    params = {
        "dim": DIM,
        "n_layers": N_LAYERS,
        "n_heads": N_HEADS,
        "n_kv_heads": LIGHT_KV_HEADS if light else None,
        "vocab_size": VOCAB,
        "multiple_of": MULTIPLE_OF,
        "ffn_dim_multiplier": None,
        "norm_eps": 1e-5,
        "rope_theta": 10000,
        "max_batch_size": 32,
        "max_seq_len": 4096 if light else 2048,
        "rope_scaling": None,
        "load_pretrained_visual_encoder": False,
    }
    if light:
        params["trainable_mode"] = "mm_stage2"
    return params


def ffn_width(params: dict) -> int:
    """The SwiGLU width as Accessory's FeedForward computes it from 4 * dim."""
    hidden = int(2 * 4 * params["dim"] / 3)
    if params["ffn_dim_multiplier"] is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    return params["multiple_of"] * math.ceil(hidden / params["multiple_of"])


def _llm_shapes(params: dict) -> dict[str, tuple[int, ...]]:
    dim, head_dim, hidden = params["dim"], params["dim"] // params["n_heads"], ffn_width(params)
    kv = (params["n_kv_heads"] or params["n_heads"]) * head_dim
    shapes = {"llma.tok_embeddings.weight": (params["vocab_size"], dim)}
    for n in range(params["n_layers"]):
        layer = f"llma.layers.{n}."
        shapes |= {
            layer + "attention.wq.weight": (dim, dim),
            layer + "attention.wk.weight": (kv, dim),
            layer + "attention.wv.weight": (kv, dim),
            layer + "attention.wo.weight": (dim, dim),
            layer + "feed_forward.w1.weight": (hidden, dim),
            layer + "feed_forward.w2.weight": (dim, hidden),
            layer + "feed_forward.w3.weight": (hidden, dim),
            layer + "attention_norm.weight": (dim,),
            layer + "ffn_norm.weight": (dim,),
        }
    return shapes | {"llma.norm.weight": (dim,), "llma.output.weight": (params["vocab_size"], dim)}


def _clip_shapes() -> dict[str, tuple[int, ...]]:
    """open_clip CLIP with `transformer=None`: the visual tower plus the text leftovers."""
    w, p = CLIP_WIDTH, "llma.clip."
    shapes = {
        p + "positional_embedding": (77, CLIP_TEXT_WIDTH),
        p + "text_projection": (CLIP_TEXT_WIDTH, CLIP_EMBED),
        p + "logit_scale": (),
        p + "visual.class_embedding": (w,),
        p + "visual.positional_embedding": (GRID**2 + 1, w),
        p + "visual.proj": (w, CLIP_EMBED),
        p + "visual.conv1.weight": (w, 3, PATCH, PATCH),
        p + "visual.ln_pre.weight": (w,),
        p + "visual.ln_pre.bias": (w,),
    }
    for n in range(CLIP_LAYERS):
        block = f"{p}visual.transformer.resblocks.{n}."
        shapes |= {
            block + "ln_1.weight": (w,),
            block + "ln_1.bias": (w,),
            block + "attn.in_proj_weight": (3 * w, w),
            block + "attn.in_proj_bias": (3 * w,),
            block + "attn.out_proj.weight": (w, w),
            block + "attn.out_proj.bias": (w,),
            block + "ln_2.weight": (w,),
            block + "ln_2.bias": (w,),
            block + "mlp.c_fc.weight": (4 * w, w),
            block + "mlp.c_fc.bias": (4 * w,),
            block + "mlp.c_proj.weight": (w, 4 * w),
            block + "mlp.c_proj.bias": (w,),
        }
    return shapes | {
        p + "visual.ln_post.weight": (w,),
        p + "visual.ln_post.bias": (w,),
        p + "token_embedding.weight": (49408, CLIP_TEXT_WIDTH),
        p + "ln_final.weight": (CLIP_TEXT_WIDTH,),
        p + "ln_final.bias": (CLIP_TEXT_WIDTH,),
    }


def _dinov2_shapes() -> dict[str, tuple[int, ...]]:
    """The DINOv2 hub ViT (block_chunks=0, SwiGLU packed in `w12`), pos_embed at 37x37 + CLS."""
    w, p = DINO_WIDTH, "llma.dinov2_vitg14."
    shapes = {
        p + "cls_token": (1, 1, w),
        p + "pos_embed": (1, DINO_STORED_GRID**2 + 1, w),
        p + "mask_token": (1, w),
        p + "patch_embed.proj.weight": (w, 3, PATCH, PATCH),
        p + "patch_embed.proj.bias": (w,),
    }
    for n in range(DINO_BLOCKS):
        block = f"{p}blocks.{n}."
        shapes |= {
            block + "norm1.weight": (w,),
            block + "norm1.bias": (w,),
            block + "attn.qkv.weight": (3 * w, w),
            block + "attn.qkv.bias": (3 * w,),
            block + "attn.proj.weight": (w, w),
            block + "attn.proj.bias": (w,),
            block + "ls1.gamma": (w,),
            block + "norm2.weight": (w,),
            block + "norm2.bias": (w,),
            block + "mlp.w12.weight": (2 * DINO_HIDDEN, w),
            block + "mlp.w12.bias": (2 * DINO_HIDDEN,),
            block + "mlp.w3.weight": (w, DINO_HIDDEN),
            block + "mlp.w3.bias": (w,),
            block + "ls2.gamma": (w,),
        }
    return shapes | {p + "norm.weight": (w,), p + "norm.bias": (w,)}


def convnext_trunk() -> torch.nn.Module:
    """timm `convnext_xxlarge` at tiny depths/dims, head pooling and flatten removed as Accessory
    does (llama_ens.py l.312-314), so it returns the head-normed stride-32 map."""
    import timm

    trunk = timm.create_model(
        "convnext_xxlarge",
        pretrained=False,
        num_classes=0,
        depths=CONVNEXT_DEPTHS,
        dims=CONVNEXT_DIMS,
    )
    trunk.head.global_pool = torch.nn.Identity()
    trunk.head.flatten = torch.nn.Identity()
    return trunk.eval()


def blip2_modules() -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers Blip2VisionModel (EVA-g-shaped: head dim 88, qkv bias) and Blip2QFormerModel."""
    from transformers import (
        Blip2QFormerConfig,
        Blip2QFormerModel,
        Blip2VisionConfig,
        Blip2VisionModel,
    )

    vision = Blip2VisionModel(
        Blip2VisionConfig(
            hidden_size=BLIP_VISION_WIDTH,
            num_hidden_layers=BLIP_VISION_LAYERS,
            num_attention_heads=BLIP_VISION_HEADS,
            intermediate_size=BLIP_VISION_FFN,
            image_size=VIEW,
            patch_size=PATCH,
            qkv_bias=True,
            layer_norm_eps=1e-6,
        )
    )
    qformer = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=QFORMER_WIDTH,
            num_hidden_layers=QFORMER_LAYERS,
            num_attention_heads=QFORMER_HEADS,
            intermediate_size=QFORMER_FFN,
            cross_attention_frequency=2,
            encoder_hidden_size=BLIP_VISION_WIDTH,
        )
    )
    return vision.eval(), qformer.eval()


def _module_shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + name: tuple(t.shape) for name, t in module.state_dict().items()}


def tiny_accessory_shapes(llama_type: str) -> dict[str, tuple[int, ...]]:
    """Every key of the tiny release and its full (unsharded) shape, in Accessory's order."""
    light = _check_type(llama_type)
    params = tiny_accessory_params(llama_type)
    shapes = {"llma.start_img": (1, 1, DIM), "llma.end_img": (1, 1, DIM)} | _llm_shapes(params)
    if not light:
        vision, qformer = blip2_modules()
        shapes |= {"llma.qformer.query_tokens": (1, N_QUERIES, QFORMER_WIDTH)}
        shapes |= _module_shapes(vision, "llma.qformer.vision_model.")
        shapes |= _module_shapes(qformer, "llma.qformer.qformer.") | _clip_shapes()
    shapes |= _module_shapes(convnext_trunk(), "llma.openclip_convnext_xxl.") | _dinov2_shapes()
    if not light:
        shapes |= {
            "llma.qformer_proj.0.weight": (DIM, QFORMER_WIDTH),
            "llma.qformer_proj.0.bias": (DIM,),
            "llma.qformer_proj.1.weight": (DIM,),
            "llma.qformer_proj.1.bias": (DIM,),
        }
    grid_channels = CONVNEXT_DIMS[-1] + DINO_WIDTH + (0 if light else CLIP_WIDTH)
    return shapes | {
        "llma.visual_proj.0.weight": (DIM, grid_channels),
        "llma.visual_proj.0.bias": (DIM,),
        "llma.visual_proj.1.weight": (DIM,),
        "llma.visual_proj.1.bias": (DIM,),
    }


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Values of a working network: norms near 1, layer scales 0.1-1, weights ~ 1/sqrt(fan_in)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "logit_scale":
        return torch.tensor(math.log(1 / 0.07))
    if leaf == "gamma":
        return 0.1 + 0.9 * torch.rand(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    if leaf in _EMBEDDINGS:
        return 0.5 * noise
    if leaf == "weight" and len(shape) == 1:  # LayerNorm, LayerNorm2d, RMSNorm
        return 1 + 0.1 * noise
    if leaf.endswith("bias"):
        if name.endswith("self_attn.qkv.bias"):  # HF Blip2 stores q | zeros | v: EVA has no k bias
            noise[shape[0] // 3 : 2 * shape[0] // 3] = 0
        return 0.1 * noise
    return noise / math.sqrt(math.prod(shape[1:]))


def tiny_accessory_weights(llama_type: str, seed: int = 0) -> dict[str, Tensor]:
    """The full (unsharded) state dict of a tiny release: `llma.` keys, every tensor bf16."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: _random_tensor(name, shape, generator).to(torch.bfloat16)
        for name, shape in tiny_accessory_shapes(llama_type).items()
    }


def split_dim(key: str) -> int | None:
    """The dim fairscale splits `key` on across model-parallel ranks; None if replicated."""
    if _COLUMN_SPLIT.fullmatch(key):
        return 0
    if _ROW_SPLIT.fullmatch(key) or key == "llma.tok_embeddings.weight":
        return 1
    return None


def shard_weights(weights: dict[str, Tensor], world: int) -> list[dict[str, Tensor]]:
    """Splits as fairscale does: ColumnParallel (wq, wk, wv, w1, w3, output) on dim 0, RowParallel
    (wo, w2) and ParallelEmbedding (tok_embeddings) on dim 1; every other tensor is cloned in full
    into every shard."""
    shards: list[dict[str, Tensor]] = [{} for _ in range(world)]
    for key, tensor in weights.items():
        dim = split_dim(key)
        if dim is not None and tensor.shape[dim] % world:
            raise ValueError(
                f"{key}: dim {dim} of {tuple(tensor.shape)} does not split {world} ways"
            )
        pieces = [tensor] * world if dim is None else tensor.chunk(world, dim=dim)
        for shard, piece in zip(shards, pieces, strict=True):
            shard[key] = piece.clone()  # a view would save the whole storage
    return shards


def write_accessory_release(
    directory: str | Path,
    llama_type: str,
    *,
    world: int = 2,
    layout: str = "model",
    seed: int = 0,
    weights: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Writes `consolidated.RR-of-WW.model.pth` (`{"model": shard}` or, with layout "flat", the
    shard itself), config.json and meta.json (json indent 2, as released) and tokenizer.model (the
    32k LLaMA-family SentencePiece model of the mistral_common wheel). Returns the full weights."""
    _check_type(llama_type)
    if layout not in ("model", "flat"):
        raise ValueError(f"layout {layout!r} is not 'model' or 'flat'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = tiny_accessory_weights(llama_type, seed) if weights is None else weights
    for rank, shard in enumerate(shard_weights(weights, world)):
        path = directory / f"consolidated.{rank:02d}-of-{world:02d}.model.pth"
        torch.save({"model": shard} if layout == "model" else shard, path)
    (directory / "config.json").write_text(json.dumps(tiny_accessory_params(llama_type), indent=2))
    (directory / "meta.json").write_text(json.dumps({"llama_type": llama_type}, indent=2))
    tokenizer = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    with importlib.resources.as_file(tokenizer) as source:
        shutil.copyfile(source, directory / "tokenizer.model")
    return weights


# --- reference forward ---------------------------------------------------------------------------


def _layer_norm(x: Tensor, w: dict[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], eps)


def _attention(x: Tensor, qkv_w: Tensor, qkv_b: Tensor, out_w: Tensor, out_b: Tensor) -> Tensor:
    """Packed-qkv multi-head self-attention over the tokens (q | k | v, heads contiguous)."""
    batch, length, width = x.shape
    q, k, v = (
        t.view(batch, length, width // HEAD_WIDTH, HEAD_WIDTH).transpose(1, 2)
        for t in F.linear(x, qkv_w, qkv_b).chunk(3, dim=-1)
    )
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
    return F.linear(out, out_w, out_b)


def clip_vit_tokens(w: dict[str, Tensor], x: Tensor, prefix: str = "llma.clip.visual.") -> Tensor:
    """Accessory's `clip_encode_image` as open_clip 2.23 ran it: all 257 tokens after ln_post, no
    proj, exact GELU (pretrained=None builds ViT-L-14 without quick_gelu)."""
    x = F.conv2d(x, w[prefix + "conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = w[prefix + "class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + w[prefix + "positional_embedding"]
    x = _layer_norm(x, w, prefix + "ln_pre", 1e-5)
    n = 0
    while f"{prefix}transformer.resblocks.{n}.ln_1.weight" in w:
        b = f"{prefix}transformer.resblocks.{n}."
        x = x + _attention(
            _layer_norm(x, w, b + "ln_1", 1e-5),
            w[b + "attn.in_proj_weight"],
            w[b + "attn.in_proj_bias"],
            w[b + "attn.out_proj.weight"],
            w[b + "attn.out_proj.bias"],
        )
        h = F.gelu(
            F.linear(
                _layer_norm(x, w, b + "ln_2", 1e-5),
                w[b + "mlp.c_fc.weight"],
                w[b + "mlp.c_fc.bias"],
            )
        )
        x = x + F.linear(h, w[b + "mlp.c_proj.weight"], w[b + "mlp.c_proj.bias"])
        n += 1
    return _layer_norm(x, w, prefix + "ln_post", 1e-5)


def dinov2_hub_pos_embed(pos_embed: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """DINOv2 hub `interpolate_pos_encoding`: bicubic with scale_factor (grid + 0.1) / stored grid,
    antialias off, in fp32, CLS position kept."""
    stored = math.isqrt(pos_embed.shape[1] - 1)
    if stored * stored == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    cls, patches = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    patches = patches.reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
    scale = ((grid_h + 0.1) / stored, (grid_w + 0.1) / stored)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    if patches.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"pos_embed resized to {tuple(patches.shape[-2:])}, not {grid_h}x{grid_w}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    return torch.cat([cls, patches], dim=1).to(pos_embed.dtype)


def dinov2_tokens(
    w: dict[str, Tensor],
    x: Tensor,
    prefix: str = "llma.dinov2_vitg14.",
    pos_embed: Tensor | None = None,
) -> Tensor:
    """`x_norm_clstoken` followed by `x_norm_patchtokens` of the DINOv2 hub ViT (LN eps 1e-6,
    layer scale, packed SwiGLU [gate | up]). `pos_embed` overrides the hub-interpolated one."""
    grid_h, grid_w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    x = (
        F.conv2d(
            x,
            w[prefix + "patch_embed.proj.weight"],
            w[prefix + "patch_embed.proj.bias"],
            stride=PATCH,
        )
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([w[prefix + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    if pos_embed is None:
        pos_embed = dinov2_hub_pos_embed(w[prefix + "pos_embed"], grid_h, grid_w)
    x = x + pos_embed
    n = 0
    while f"{prefix}blocks.{n}.norm1.weight" in w:
        b = f"{prefix}blocks.{n}."
        attn = _attention(
            _layer_norm(x, w, b + "norm1", 1e-6),
            w[b + "attn.qkv.weight"],
            w[b + "attn.qkv.bias"],
            w[b + "attn.proj.weight"],
            w[b + "attn.proj.bias"],
        )
        x = x + w[b + "ls1.gamma"] * attn
        gate, up = F.linear(
            _layer_norm(x, w, b + "norm2", 1e-6), w[b + "mlp.w12.weight"], w[b + "mlp.w12.bias"]
        ).chunk(2, dim=-1)
        x = x + w[b + "ls2.gamma"] * F.linear(
            F.silu(gate) * up, w[b + "mlp.w3.weight"], w[b + "mlp.w3.bias"]
        )
        n += 1
    return _layer_norm(x, w, prefix + "norm", 1e-6)


def _load(module: torch.nn.Module, w: dict[str, Tensor], prefix: str) -> torch.nn.Module:
    module.load_state_dict({k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)})
    return module


def _convnext_tokens(trunk: torch.nn.Module, x: Tensor) -> Tensor:
    """257 tokens: the stride-32 map (8x8 repeated to 16x16, or 16x16 as is) row-major, with its
    mean prepended as a pseudo-CLS (llama_ens.py l.399-412, llama_ens_light.py l.372-380)."""
    feats = trunk(x)
    if feats.shape[-1] * 2 == GRID:
        feats = feats.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    if feats.shape[-2:] != (GRID, GRID):
        raise ValueError(f"ConvNeXt map {tuple(feats.shape[-2:])} from a {x.shape[-1]} px input")
    feats = feats.flatten(2).transpose(1, 2)
    return torch.cat([feats.mean(dim=1, keepdim=True), feats], dim=1)


def _resize(x: Tensor, size: int, mode: str, fp16: bool) -> Tensor:
    if fp16:
        return F.interpolate(x.half(), size=(size, size), mode=mode).to(x.dtype)
    return F.interpolate(x, size=(size, size), mode=mode)


def _quadrants(x: Tensor) -> list[Tensor]:
    """TL, TR, BL, BR."""
    h, v = x.shape[-2] // 2, x.shape[-1] // 2
    return [x[..., :h, :v], x[..., :h, v:], x[..., h:, :v], x[..., h:, v:]]


def _stats(values: tuple[float, ...], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype).view(3, 1, 1)


def _projected(w: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """Accessory's `Sequential(Linear, LayerNorm(dim))` projections."""
    return _layer_norm(
        F.linear(x, w[name + ".0.weight"], w[name + ".0.bias"]), w, name + ".1", 1e-5
    )


def _ens_views(w: dict[str, Tensor], image: Tensor, llama_type: str, fp16: bool) -> Tensor:
    """SPHINX 13B: per 224 view, 32 Q-Former tokens then visual_proj([CLIP | ConvNeXt | DINOv2]).
    The views are stacked on the batch dim, view-major, as llama_ens5.py l.381-385 does."""
    views = image
    if llama_type == "llama_ens5":
        views = torch.cat([_resize(image, VIEW, "bicubic", fp16), *_quadrants(image)])
    trunk = _load(convnext_trunk(), w, "llma.openclip_convnext_xxl.")
    vision, qformer = blip2_modules()
    _load(vision, w, "llma.qformer.vision_model.")
    _load(qformer, w, "llma.qformer.qformer.")
    image_embeds = vision(pixel_values=views).last_hidden_state
    queries = qformer(
        query_embeds=w["llma.qformer.query_tokens"].expand(views.shape[0], -1, -1),
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
    ).last_hidden_state
    clip_std, clip_mean = _stats(CLIP_STD, image), _stats(CLIP_MEAN, image)
    dino_std, dino_mean = _stats(IMAGENET_STD, image), _stats(IMAGENET_MEAN, image)
    grid = [
        clip_vit_tokens(w, views),
        _convnext_tokens(trunk, _resize(views, 256, "nearest", fp16)),
        dinov2_tokens(w, (views * clip_std + clip_mean - dino_mean) / dino_std),
    ]
    return torch.cat(
        [
            _projected(w, "llma.qformer_proj", queries),
            _projected(w, "llma.visual_proj", torch.cat(grid, dim=2)),
        ],
        dim=1,
    )


def _light_views(w: dict[str, Tensor], image: Tensor, llama_type: str, fp16: bool) -> Tensor:
    """SPHINX-Tiny: per view, visual_proj([ConvNeXt at 512 px | DINOv2 at 224 px]); the two
    encoders see differently made views (llama_ens5_light.py l.370-387)."""
    dino_views = _resize(image, VIEW, "bicubic", fp16)
    if llama_type == "llama_ens5_light":
        dino_quadrants = _quadrants(_resize(image, 2 * VIEW, "bicubic", fp16))
        dino_views = torch.cat([dino_views, *dino_quadrants])
        convnext_views = torch.cat([_resize(image, 512, "bicubic", fp16), *_quadrants(image)])
    else:
        convnext_views = _resize(image, 512, "nearest", fp16)
    trunk = _load(convnext_trunk(), w, "llma.openclip_convnext_xxl.")
    scale = _stats(CLIP_STD, image) / _stats(IMAGENET_STD, image)
    shift = (_stats(CLIP_MEAN, image) - _stats(IMAGENET_MEAN, image)) / _stats(IMAGENET_STD, image)
    grid = [_convnext_tokens(trunk, convnext_views), dinov2_tokens(w, dino_views * scale + shift)]
    return _projected(w, "llma.visual_proj", torch.cat(grid, dim=2))


def _float_weights(weights: dict[str, Tensor], llm: bool) -> dict[str, Tensor]:
    """fp32 copies of the LLM tensors (llm=True) or of the visual ones."""
    return {
        k: v.float()
        for k, v in weights.items()
        if (k.split(".")[1] in _LLM_ROOTS) is llm and not k.startswith(_CLIP_TEXT)
    }


@torch.no_grad()
def reference_visual_tokens(
    weights: dict[str, Tensor],
    params: dict,
    llama_type: str,
    image: Tensor,
    *,
    fp16_resize: bool = True,
) -> Tensor:
    """The image_words tokens [B, image_words, dim] Accessory puts after BOS: per view (global,
    TL, TR, BL, BR) [start_img, (32 Q-Former tokens,) 257 grid tokens, end_img]."""
    light = _check_type(llama_type)
    size = IMAGE_SIZE[llama_type]
    if image.ndim != 4 or tuple(image.shape[1:]) != (3, size, size):
        raise ValueError(
            f"{llama_type} takes images [B, 3, {size}, {size}], got {tuple(image.shape)}"
        )
    w = _float_weights(weights, llm=False)
    image = image.float()
    views = (_light_views if light else _ens_views)(w, image, llama_type, fp16_resize)
    start = w["llma.start_img"].expand(image.shape[0], -1, -1)
    end = w["llma.end_img"].expand(image.shape[0], -1, -1)
    views = views.chunk(VIEWS[llama_type])  # view-major: global, TL, TR, BL, BR
    tokens = torch.cat([torch.cat([start, view, end], dim=1) for view in views], dim=1)
    assert tokens.shape[1] == IMAGE_WORDS[llama_type], tokens.shape
    return tokens


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _meta_rope(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Meta/Accessory RoPE: adjacent pairs (2i, 2i+1) of each head rotated as complex numbers."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


def llama_logits(weights: dict[str, Tensor], params: dict, h: Tensor, first: int = 0) -> Tensor:
    """The Meta-layout LLaMA over input embeddings h [B, L, dim] (fp32 weights): logits
    [B, L - first, vocab] for positions first.. on. Causal, GQA by repeating each kv head, RMSNorm
    eps and rope_theta/rope_scaling from params."""
    w = weights
    n_heads = params["n_heads"]
    n_kv = params["n_kv_heads"] or n_heads
    batch, length, dim = h.shape
    head_dim, eps = dim // n_heads, params["norm_eps"]
    freqs = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    t = torch.arange(length).float()
    if params.get("rope_scaling") is not None:
        t = t * params["rope_scaling"]  # Accessory multiplies positions (llama.py l.50-53)
    angles = torch.outer(t, freqs)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)
    for n in range(params["n_layers"]):
        layer = f"llma.layers.{n}."
        x = _rms_norm(h, w[layer + "attention_norm.weight"], eps)
        q = F.linear(x, w[layer + "attention.wq.weight"]).view(batch, length, n_heads, head_dim)
        k = F.linear(x, w[layer + "attention.wk.weight"]).view(batch, length, n_kv, head_dim)
        v = F.linear(x, w[layer + "attention.wv.weight"]).view(batch, length, n_kv, head_dim)
        q, k = _meta_rope(q, freqs_cis), _meta_rope(k, freqs_cis)
        k, v = (t.repeat_interleave(n_heads // n_kv, dim=2) for t in (k, v))
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        h = h + F.linear(
            out.transpose(1, 2).reshape(batch, length, dim), w[layer + "attention.wo.weight"]
        )
        x = _rms_norm(h, w[layer + "ffn_norm.weight"], eps)
        gated = F.silu(F.linear(x, w[layer + "feed_forward.w1.weight"])) * F.linear(
            x, w[layer + "feed_forward.w3.weight"]
        )
        h = h + F.linear(gated, w[layer + "feed_forward.w2.weight"])
    return F.linear(_rms_norm(h[:, first:], w["llma.norm.weight"], eps), w["llma.output.weight"])


@torch.no_grad()
def reference_logits(
    weights: dict[str, Tensor],
    params: dict,
    llama_type: str,
    image: Tensor | None,
    input_ids: Tensor,
    *,
    fp16_resize: bool = True,
) -> Tensor:
    """Accessory's `Transformer.forward(examples, image)` in fp32: the visual tokens go right
    after BOS and logits come back for the text positions only (`h[:, image_words:]`), so
    `logits[:, i]` predicts `input_ids[:, i + 1]`. `image=None` runs text only."""
    w = _float_weights(weights, llm=True)
    h = F.embedding(input_ids, w["llma.tok_embeddings.weight"])
    if image is None:
        return llama_logits(w, params, h)
    visual = reference_visual_tokens(weights, params, llama_type, image, fp16_resize=fp16_resize)
    h = torch.cat([h[:, :1], visual, h[:, 1:]], dim=1)
    return llama_logits(w, params, h, first=visual.shape[1])
