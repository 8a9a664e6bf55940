"""Hugging Face `transformers` vision models as visual encoders: CLIPVisionModel, SiglipVisionModel
and Dinov2Model.

Features are `hidden_states[i]` of the model (index 0 is the embedding output, -1 the last
block's output before the model's final norm), as LLaVA selects them: a list of indices gives
their channel concatenation. `final_norm=True` applies the model's own final norm to a single
selected layer (with -1 this equals `last_hidden_state` for DINOv2 and SigLIP). The CLS token,
where the family has one, is kept or dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sphinx_mllm.encoders.base import Grid, VisualEncoder
from sphinx_mllm.encoders.building import Pretrained, building_on, finish, resolve_pretrained
from sphinx_mllm.encoders.transforms import (
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Size,
    Stats,
    to_size,
)


@dataclass(frozen=True)
class HFVisionFamily:
    """What differs between the supported transformers vision models."""

    model_class: str
    config_class: str
    has_cls: bool
    final_norm: str
    any_size: bool  # interpolates its position embeddings for any multiple of the patch size
    mean: Stats
    std: Stats


FAMILIES = {
    "clip_vision_model": HFVisionFamily(
        "CLIPVisionModel",
        "CLIPVisionConfig",
        True,
        "post_layernorm",
        False,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
    ),
    "siglip_vision_model": HFVisionFamily(
        "SiglipVisionModel",
        "SiglipVisionConfig",
        False,
        "post_layernorm",
        False,
        HALF_MEAN,
        HALF_STD,
    ),
    "dinov2": HFVisionFamily(
        "Dinov2Model", "Dinov2Config", True, "layernorm", True, IMAGENET_MEAN, IMAGENET_STD
    ),
}


def _family(model_type: str) -> HFVisionFamily:
    if model_type not in FAMILIES:
        raise ValueError(
            f"Unsupported transformers vision model type {model_type!r}; "
            f"supported: {sorted(FAMILIES)}"
        )
    return FAMILIES[model_type]


class HFVisionEncoder(VisualEncoder):
    """Tokens of a transformers vision model from one or more hidden-state layers."""

    checkpoint_prefixes = ("", "vision_model.")

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        feature_layer: int | Sequence[int] = -1,
        keep_cls: bool = True,
        final_norm: bool = False,
        input_size: Size | None = None,
        mean: Stats | None = None,
        std: Stats | None = None,
    ) -> None:
        config = model.config
        family = _family(config.model_type)
        layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
        num_states = config.num_hidden_layers + 1
        if not layers or any(not -num_states <= layer < num_states for layer in layers):
            raise ValueError(
                f"{name}: feature_layer {feature_layer} must index its {num_states} hidden states"
            )
        if final_norm and len(layers) != 1:
            raise ValueError(f"{name}: final_norm applies to a single feature layer, got {layers}")
        super().__init__(
            name=name,
            input_size=input_size or config.image_size,
            mean=mean or family.mean,
            std=std or family.std,
            embed_dim=config.hidden_size * len(layers),
            leading_token=keep_cls and family.has_cls,
        )
        self.model = model
        self.family = family
        self.layers = [layer % num_states for layer in layers]
        self.final_norm = final_norm
        self.patch_size = to_size(config.patch_size)

    def grid_size(self, image_size: Size | None = None) -> Grid:
        size = self._size(image_size)
        if not self.family.any_size:
            self._require_size(size, to_size(self.model.config.image_size))
        if size[0] < self.patch_size[0] or size[1] < self.patch_size[1]:
            raise ValueError(
                f"Encoder {self.name!r} takes images of at least one patch {self.patch_size}, "
                f"got {size[0]}x{size[1]}"
            )
        # Like the patch convolution, the grid drops a remainder smaller than a patch.
        return size[0] // self.patch_size[0], size[1] // self.patch_size[1]

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden_states = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        selected = [hidden_states[layer] for layer in self.layers]
        features = selected[0] if len(selected) == 1 else torch.cat(selected, dim=-1)
        if self.final_norm:
            features = getattr(self.model, self.family.final_norm)(features)
        return features[:, 1:] if self.family.has_cls and not self.leading_token else features


def create_hf_vision_encoder(
    name: str,
    config: Any,
    pretrained: Pretrained = None,
    *,
    default_source: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    frozen: bool = True,
    **options: Any,
) -> HFVisionEncoder:
    """Build a transformers vision model from `config` (a config object or a dict with
    `model_type`), or `from_pretrained` when `pretrained` is a Hugging Face id, and wrap it."""
    import transformers

    if isinstance(config, dict):
        settings = dict(config)
        family = _family(settings.pop("model_type"))
        config = getattr(transformers, family.config_class)(**settings)
    family = _family(config.model_type)
    model_class = getattr(transformers, family.model_class)
    source = resolve_pretrained(pretrained, default_source)
    if source.library_source is not None:
        try:
            model = model_class.from_pretrained(source.library_source, dtype=dtype).to(
                device or "cpu"
            )
        except OSError as error:
            raise RuntimeError(
                f"{name}: could not load {source.library_source!r} from the Hugging Face hub or "
                f"its local cache: {error}. Pass pretrained=<local file or directory> instead."
            ) from error
    else:
        with building_on(device, dtype):
            model = model_class(config)
    return finish(HFVisionEncoder(model, name=name, **options), source, frozen=frozen)


# -- registered presets (entry-point group sphinx_mllm_encoders) ----------------------------------

CLIP_VIT_L14_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
SIGLIP_SO400M14_384 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
}
DINOV2_LARGE = {
    "model_type": "dinov2",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 518,
    "patch_size": 14,
    "layerscale_value": 1.0,
}
CLIP_VIT_B32 = {
    "model_type": "clip_vision_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
}
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def hf_clip_vit_l14_336(pretrained: Pretrained = None, **overrides: Any) -> HFVisionEncoder:
    """LLaVA-1.5's CLIP ViT-L/14-336 (transformers): penultimate layer, no CLS, 576 x 1024."""
    options = {"feature_layer": -2, "keep_cls": False, **overrides}
    return create_hf_vision_encoder(
        "hf_clip_vit_l14_336",
        CLIP_VIT_L14_336,
        pretrained,
        default_source="openai/clip-vit-large-patch14-336",
        **options,
    )


def hf_siglip_so400m14_384(pretrained: Pretrained = None, **overrides: Any) -> HFVisionEncoder:
    """SigLIP SO400M/14-384 (transformers), last layer: 729 x 1152."""
    return create_hf_vision_encoder(
        "hf_siglip_so400m14_384",
        SIGLIP_SO400M14_384,
        pretrained,
        default_source="google/siglip-so400m-patch14-384",
        **overrides,
    )


def hf_dinov2_vitl14(pretrained: Pretrained = None, **overrides: Any) -> HFVisionEncoder:
    """DINOv2 ViT-L/14 (transformers) at 224, final norm applied: CLS + 256 tokens x 1024."""
    options = {"final_norm": True, "input_size": 224, **overrides}
    return create_hf_vision_encoder(
        "hf_dinov2_vitl14",
        DINOV2_LARGE,
        pretrained,
        default_source="facebook/dinov2-large",
        **options,
    )


def hf_vision(
    pretrained: Pretrained = None, *, config: Any = None, **overrides: Any
) -> HFVisionEncoder:
    """Any supported transformers vision model: a Hugging Face id as `pretrained`, or a `config`
    (default: the CLIP ViT-B/32 shape)."""
    if config is None and isinstance(pretrained, str) and not Path(pretrained).is_file():
        import transformers  # a hub id or a local model directory carries its config

        config = transformers.AutoConfig.from_pretrained(pretrained)
        config = getattr(config, "vision_config", config)
    return create_hf_vision_encoder(
        "hf_vision", CLIP_VIT_B32 if config is None else config, pretrained, **overrides
    )


def tiny_hf_clip(pretrained: Pretrained = None, **overrides: Any) -> HFVisionEncoder:
    """A random-initialised transformers CLIP vision model (32 px, patch 8, width 32, 2 layers)."""
    config = {"model_type": "clip_vision_model", **TINY, "image_size": 32, "patch_size": 8}
    return create_hf_vision_encoder("tiny_hf_clip", config, pretrained, **overrides)


def tiny_hf_siglip(pretrained: Pretrained = None, **overrides: Any) -> HFVisionEncoder:
    """A random-initialised transformers SigLIP vision model (32 px, patch 8, width 32)."""
    config = {"model_type": "siglip_vision_model", **TINY, "image_size": 32, "patch_size": 8}
    return create_hf_vision_encoder("tiny_hf_siglip", config, pretrained, **overrides)


def tiny_hf_dinov2(pretrained: Pretrained = None, **overrides: Any) -> HFVisionEncoder:
    """A random-initialised transformers DINOv2 (56 px, patch 14, width 32), final norm."""
    config = {"model_type": "dinov2", **TINY, "image_size": 56, "patch_size": 14}
    options = {"final_norm": True, **overrides}
    return create_hf_vision_encoder("tiny_hf_dinov2", config, pretrained, **options)
