"""The `ModelConfig` of a LLaMA2-Accessory SPHINX release, read from its `config.json`, its
`meta.json` and the shapes of its tensors (so scaled-down releases, as tests write, convert too).

| llama_type | SPHINX variant | views | encoders (side fed) | tokens per image |
|---|---|---|---|---|
| `llama_ens` | SPHINX | 1 at 224 | CLIP-L/14 224, ConvNeXt-XXL 256, DINOv2-g 224, Q-Former | 291 |
| `llama_ens5` | SPHINX-1k, SPHINX-v2-1k | global + 2x2 of 224 | same | 1455 |
| `llama_ens_light` | SPHINX-Tiny | 1 at 512 | ConvNeXt-XXL 512, DINOv2-g 224 (bicubic) | 259 |
| `llama_ens5_light` | SPHINX-Tiny-1k | global + 2x2 of 512 | same | 1295 |

Each encoder is the toolkit adapter of the library object Accessory builds, and takes its stored
names as they are (open_clip's ViT, the timm ConvNeXt trunk, the BLIP-2 parts of transformers),
except DINOv2: the hub's ViT-g/14 becomes timm's `vit_giant_patch14_dinov2` (see `weights`).
Widths, depths, patch and image sizes come from the tensors; what a state dict cannot show, the
number of attention heads, follows the released models' head widths: 64 for CLIP, DINOv2 and the
Q-Former, 88 for BLIP-2's EVA ViT-g (1408 / 16). The LLM is a transformers `LlamaForCausalLM`
described by its whole config; `config.json`'s nulls (`n_kv_heads`, `ffn_dim_multiplier`,
`rope_scaling`) mean "not set", as in Accessory's `ModelArgs`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sphinx_mllm.pipeline.accessory.release import AccessoryImportError, AccessoryRelease
from sphinx_mllm.pipeline.config import (
    EncoderSpec,
    LLMConfig,
    ModelConfig,
    TokenizerConfig,
    VisionConfig,
)
from sphinx_mllm.pipeline.presets import sphinx_generation

# Accessory module prefix -> the encoder registry name (also the stream's name in the stack)
ENCODERS = {
    "clip": "clip_vit_l14",
    "openclip_convnext_xxl": "convnext_xxlarge_trunk",
    "dinov2_vitg14": "dinov2_vitg14",
    "qformer": "blip2_qformer_opt2_7b",
}
LIGHT_TYPES = ("llama_ens_light", "llama_ens5_light")
MULTI_VIEW_TYPES = ("llama_ens5", "llama_ens5_light")
HEAD_WIDTH = {"clip": 64, "dinov2": 64, "qformer": 64, "eva": 88}
# Accessory's MetaModel runs SPHINX with max_seq_len 4096 (accessory/model/meta.py)
MAX_POSITIONS = 4096
PROMPT_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


@dataclass(frozen=True)
class Geometry:
    """How a llama_type feeds its images (A:`accessory/model/LLM/<llama_type>.py`): the view side
    and tile grid, each encoder's input side, and which inputs the released code passes through
    `F.interpolate(x.half(), ...)`:
    - `llama_ens` l.400, `llama_ens5` l.383 and l.407: the 1k global view, and the ConvNeXt input
      (every view, nearest 224 -> 256);
    - `llama_ens_light` l.370 and l.373: the DINOv2 input (bicubic 512 -> 224) and the ConvNeXt
      input (an identity 512 -> 512 resize: only the rounding remains);
    - `llama_ens5_light` l.370-379: DINOv2's global view (1024 -> 224) and tiles (cut from the
      image at 448), both from the whole image, and ConvNeXt's global view (1024 -> 512); its
      ConvNeXt tiles are raw 512 crops."""

    base_size: int
    grid: int
    convnext_side: int
    convnext_half: bool
    dinov2_half: bool
    dinov2_from_canvas: bool

    @classmethod
    def of(cls, llama_type: str) -> Geometry:
        return {
            "llama_ens": cls(224, 1, 256, True, False, False),
            "llama_ens5": cls(224, 2, 256, True, False, False),
            "llama_ens_light": cls(512, 1, 512, True, True, False),
            "llama_ens5_light": cls(512, 2, 512, False, True, True),
        }[llama_type]


def accessory_model_config(
    release: AccessoryRelease,
    *,
    dtype: str = "bfloat16",
    half_precision_resize: bool = True,
    quick_gelu: bool = False,
    name: str | None = None,
) -> ModelConfig:
    """The toolkit config of the model a release holds. `half_precision_resize` resizes views
    in float16 where the released code does; `quick_gelu` runs CLIP with QuickGELU (what the
    OpenAI weights were trained with) instead of the GELU the released code builds."""
    geometry = Geometry.of(release.llama_type)
    light = release.llama_type in LIGHT_TYPES
    prefixes = _module_prefixes(release)
    expected = {"openclip_convnext_xxl", "dinov2_vitg14"} | (
        set() if light else {"clip", "qformer"}
    )
    _require_modules(release, prefixes, expected)
    encoders = []
    if not light:
        encoders.append(_clip(release, geometry, quick_gelu))
    encoders.append(_convnext(release, geometry, half_precision_resize))
    encoders.append(_dinov2(release, geometry, half_precision_resize))
    if not light:
        encoders.append(_qformer(release, geometry))
    splitter_options: dict[str, Any] = {"base_size": geometry.base_size}
    if geometry.grid > 1:
        splitter_options.update(grid=geometry.grid, half_precision_resize=half_precision_resize)
    vision = VisionConfig(
        encoders=encoders,
        splitter="global_grid" if geometry.grid > 1 else "single",
        splitter_options=splitter_options,
        mixer="channel_concat",
    )
    return ModelConfig(
        vision=vision,
        llm=llm_config(release),
        tokenizer=TokenizerConfig(source=str(release.directory.resolve())),
        template="sphinx",
        placement="prefix",
        generation=sphinx_generation(),
        dtype=dtype,
        name=name or release.directory.resolve().name,
    )


# -- the LLM --------------------------------------------------------------------------------------


def _param(release: AccessoryRelease, key: str, default: Any = None) -> Any:
    value = release.params.get(key)
    return default if value is None else value


def _int_param(release: AccessoryRelease, key: str) -> int:
    value = release.params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AccessoryImportError(
            f"{release.directory / 'config.json'}: {key} is {value!r}; expected a positive integer"
        )
    return value


def llm_config(release: AccessoryRelease) -> LLMConfig:
    """The LLM as a transformers Llama config: sizes from config.json, checked against the
    tensors (the FFN width as Accessory computes it from `multiple_of` and
    `ffn_dim_multiplier`)."""
    where = release.directory / "config.json"
    tensors = release.tensors
    dim = _int_param(release, "dim")
    n_layers = _int_param(release, "n_layers")
    n_heads = _int_param(release, "n_heads")
    n_kv_heads = _param(release, "n_kv_heads", n_heads)
    _require("tok_embeddings.weight", release)
    vocab, embed_dim = tensors["tok_embeddings.weight"].shape
    if embed_dim != dim:
        raise AccessoryImportError(f"{where}: dim is {dim} but tok_embeddings is {embed_dim} wide")
    layers = {int(m[1]) for n in tensors if (m := re.match(r"layers\.(\d+)\.", n))}
    if layers != set(range(n_layers)):
        raise AccessoryImportError(
            f"{where}: n_layers is {n_layers} but the shards hold layers {sorted(layers)[:4]}..."
            f"{sorted(layers)[-1:]} ({len(layers)} in all)"
        )
    if dim % n_heads or n_heads % n_kv_heads:
        raise AccessoryImportError(
            f"{where}: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads} do not divide evenly"
        )
    head_dim = dim // n_heads
    _require_shape(release, "layers.0.attention.wk.weight", (n_kv_heads * head_dim, dim))
    hidden = _ffn_width(release, dim)
    _require_shape(release, "layers.0.feed_forward.w1.weight", (hidden, dim))
    _require_shape(release, "output.weight", (vocab, dim))
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": float(_param(release, "rope_theta", 10000.0)),
    }
    scaling = release.params.get("rope_scaling")
    if scaling is not None:
        if not isinstance(scaling, int | float) or isinstance(scaling, bool) or scaling <= 0:
            raise AccessoryImportError(
                f"{where}: rope_scaling is {scaling!r}; expected null or a positive number"
            )
        # Accessory multiplies positions by rope_scaling; transformers' linear scaling divides
        rope.update(rope_type="linear", factor=1.0 / float(scaling))
    settings = {
        "model_type": "llama",
        "hidden_size": dim,
        "intermediate_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": float(_param(release, "norm_eps", 1e-5)),
        "rope_parameters": rope,
        "max_position_embeddings": max(MAX_POSITIONS, int(_param(release, "max_seq_len", 0))),
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        **PROMPT_IDS,
    }
    return LLMConfig(f"accessory:{release.llama_type}", config=settings, pretrained=False)


def _ffn_width(release: AccessoryRelease, dim: int) -> int:
    """Accessory's FeedForward width, checked against the stored w1."""
    multiple_of = _int_param(release, "multiple_of")
    hidden = int(2 * (4 * dim) / 3)
    multiplier = release.params.get("ffn_dim_multiplier")
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# -- the encoders ---------------------------------------------------------------------------------


def _module_prefixes(release: AccessoryRelease) -> set[str]:
    return {name.split(".", 1)[0] for name in release.tensors}


def _require_modules(release: AccessoryRelease, found: set[str], expected: set[str]) -> None:
    missing = sorted(expected - found)
    if missing:
        raise AccessoryImportError(
            f"{release.directory}: a {release.llama_type} release holds the encoders "
            f"{sorted(expected)}, but no tensor starts with {[f'llma.{m}.' for m in missing]}"
        )


def _require(name: str, release: AccessoryRelease) -> tuple[int, ...]:
    if name not in release.tensors:
        raise AccessoryImportError(
            f"{release.directory}: llma.{name} is missing from the shards ({release.llama_type})"
        )
    return release.tensors[name].shape


def _require_shape(release: AccessoryRelease, name: str, shape: tuple[int, ...]) -> None:
    found = _require(name, release)
    if found != shape:
        raise AccessoryImportError(
            f"{release.directory}: llma.{name} has shape {found}; config.json implies {shape}"
        )


def _count(release: AccessoryRelease, pattern: str) -> int:
    """How many distinct indices the regex group of `pattern` takes over the tensor names."""
    regex = re.compile(pattern)
    return len({m[1] for name in release.tensors if (m := regex.match(name))})


def _square_grid(tokens: int, what: str, release: AccessoryRelease) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise AccessoryImportError(
            f"{release.directory}: {what} has {tokens} positions, not a square grid"
        )
    return side


def _differing(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if defaults.get(key) != value}


def _clip(release: AccessoryRelease, geometry: Geometry, quick_gelu: bool) -> EncoderSpec:
    width, _, patch, _ = _require("clip.visual.conv1.weight", release)
    positions = _require("clip.visual.positional_embedding", release)[0] - 1
    vision = {
        "width": width,
        "layers": _count(release, r"clip\.visual\.transformer\.resblocks\.(\d+)\."),
        "patch_size": patch,
        "image_size": _square_grid(positions, "llma.clip.visual.positional_embedding", release)
        * patch,
        "head_width": HEAD_WIDTH["clip"],
        "mlp_ratio": _require("clip.visual.transformer.resblocks.0.mlp.c_fc.weight", release)[0]
        / width,
    }
    defaults = {
        "width": 1024,
        "layers": 24,
        "patch_size": 14,
        "image_size": 224,
        "head_width": 64,
        "mlp_ratio": 4.0,
    }
    options: dict[str, Any] = {}
    if overrides := _differing(vision, defaults):
        options["vision_cfg"] = overrides
    embed_dim = _require("clip.visual.proj", release)[1]
    if embed_dim != 768:
        options["embed_dim"] = embed_dim
    if quick_gelu:
        options["quick_gelu"] = True
    return EncoderSpec(ENCODERS["clip"], options=options, image_size=geometry.base_size)


def _convnext(release: AccessoryRelease, geometry: Geometry, half: bool) -> EncoderSpec:
    prefix = "openclip_convnext_xxl"
    stages = _count(release, rf"{prefix}\.stages\.(\d+)\.")
    depths = [_count(release, rf"{prefix}\.stages\.{s}\.blocks\.(\d+)\.") for s in range(stages)]
    dims = [
        _require(f"{prefix}.stages.{s}.blocks.0.conv_dw.weight", release)[0] for s in range(stages)
    ]
    options: dict[str, Any] = {"input_size": geometry.convnext_side}
    if depths != [3, 4, 30, 3] or dims != [384, 768, 1536, 3072]:
        options.update(depths=depths, dims=dims)
    return EncoderSpec(
        ENCODERS[prefix],
        options=options,
        image_size=geometry.convnext_side,
        resize="nearest",  # F.interpolate's default mode, which the released code leaves as is
        half_precision_resize=half and geometry.convnext_half,
    )


def _dinov2(release: AccessoryRelease, geometry: Geometry, half: bool) -> EncoderSpec:
    prefix = "dinov2_vitg14"
    width = _require(f"{prefix}.cls_token", release)[-1]
    patch = _require(f"{prefix}.patch_embed.proj.weight", release)[-1]
    hidden = _require(f"{prefix}.blocks.0.mlp.w12.weight", release)[0]
    values = {
        "embed_dim": width,
        "depth": _count(release, rf"{prefix}\.blocks\.(\d+)\."),
        "num_heads": width // HEAD_WIDTH["dinov2"],
        "patch_size": patch,
    }
    options = _differing(
        values, {"embed_dim": 1536, "depth": 40, "num_heads": 24, "patch_size": 14}
    )
    if hidden != 8192 or width != 1536:
        # timm sizes the packed SwiGLU as int(width * mlp_ratio); the half-unit keeps the int exact
        options["mlp_ratio"] = (hidden + 0.5) / width
    return EncoderSpec(
        ENCODERS[prefix],
        options=options,
        image_size=224,
        resize="bicubic",
        half_precision_resize=half and geometry.dinov2_half,
        resample_from="canvas" if geometry.dinov2_from_canvas else "view",
    )


def _qformer(release: AccessoryRelease, geometry: Geometry) -> EncoderSpec:
    vision_prefix = "qformer.vision_model."
    hidden, _, patch, _ = _require(f"{vision_prefix}embeddings.patch_embedding.weight", release)
    positions = _require(f"{vision_prefix}embeddings.position_embedding", release)[1] - 1
    vision = {
        "hidden_size": hidden,
        "intermediate_size": _require(f"{vision_prefix}encoder.layers.0.mlp.fc1.weight", release)[
            0
        ],
        "num_hidden_layers": _count(release, r"qformer\.vision_model\.encoder\.layers\.(\d+)\."),
        "num_attention_heads": hidden // HEAD_WIDTH["eva"],
        "patch_size": patch,
        "image_size": _square_grid(positions, "the BLIP-2 position embedding", release) * patch,
    }
    q_prefix = "qformer.qformer.encoder.layer."
    width = _require("qformer.qformer.layernorm.weight", release)[0]
    layers = _count(release, r"qformer\.qformer\.encoder\.layer\.(\d+)\.")
    crossing = sorted(
        {
            int(m[1])
            for n in release.tensors
            if (m := re.match(rf"{re.escape(q_prefix)}(\d+)\.crossattention\.", n))
        }
    )
    frequency = crossing[1] - crossing[0] if len(crossing) > 1 else layers
    qformer = {
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": width // HEAD_WIDTH["qformer"],
        "intermediate_size": _require(f"{q_prefix}0.intermediate_query.dense.weight", release)[0],
        "cross_attention_frequency": frequency,
        "encoder_hidden_size": _require(
            f"{q_prefix}0.crossattention.attention.key.weight", release
        )[1],
    }
    config: dict[str, Any] = {}
    vision_defaults = {
        "hidden_size": 1408,
        "intermediate_size": 6144,
        "num_hidden_layers": 39,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
    }
    qformer_defaults = {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "cross_attention_frequency": 2,
        "encoder_hidden_size": 1408,
    }
    if overrides := _differing(vision, vision_defaults):
        config["vision_config"] = overrides
    if overrides := _differing(qformer, qformer_defaults):
        config["qformer_config"] = overrides
    queries = _require("qformer.query_tokens", release)[1]
    if queries != 32:
        config["num_query_tokens"] = queries
    options = {"config": config} if config else {}
    return EncoderSpec(ENCODERS["qformer"], options=options, image_size=geometry.base_size)
