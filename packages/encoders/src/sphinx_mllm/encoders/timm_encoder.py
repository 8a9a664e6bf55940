"""timm vision models as visual encoders: DINOv2 (with or without register tokens), SigLIP, and any
timm ViT or convnet.

Vision Transformers give their final normed tokens (`forward_features`); the CLS token leads when
the model has one, and register tokens (the `_reg4` DINOv2 variants) are dropped, so the tokens
are CLS + patch grid as SPHINX takes them from DINOv2 ViT-g/14. Convnets give their final map
after the head's norm with the head's pooling removed, flattened row-major; a mean-pooled token
can lead. DINOv2 is built at 224 (SPHINX's size); timm resamples pretrained position embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from sphinx_mllm.encoders.base import Grid, VisualEncoder
from sphinx_mllm.encoders.building import Pretrained, building_on, finish, resolve_pretrained
from sphinx_mllm.encoders.transforms import Size, Stats


def _is_token_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


class TimmEncoder(VisualEncoder):
    """Tokens of a timm model: prefix-aware for ViTs, flattened final map for convnets."""

    checkpoint_prefixes = ("", "module.")

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        mean: Stats,
        std: Stats,
        input_size: Size,
        keep_cls: bool = True,
        pooled_token: bool = False,
    ) -> None:
        self.is_token_model = _is_token_model(model)
        if self.is_token_model:
            has_cls = bool(getattr(model, "has_class_token", model.num_prefix_tokens > 0))
            leading_token = keep_cls and has_cls
            input_size = model.patch_embed.img_size or input_size
        else:
            model.reset_classifier(0, global_pool="")  # keep the head's norm, drop its pooling
            leading_token = pooled_token
        super().__init__(
            name=name,
            input_size=input_size,
            mean=mean,
            std=std,
            embed_dim=model.num_features,
            leading_token=leading_token,
        )
        self.model = model

    def grid_size(self, image_size: Size | None = None) -> Grid:
        size = self._size(image_size)
        if not self.is_token_model:
            stride = self.model.feature_info[-1]["reduction"]
            self._require_multiple(size, (stride, stride), "stride")
            return size[0] // stride, size[1] // stride
        patch_embed = self.model.patch_embed
        if not getattr(self.model, "dynamic_img_size", False):
            why = " (build it with dynamic_img_size=True for other sizes)"
            self._require_size(size, self.input_size, why)
            return tuple(patch_embed.grid_size)
        if not patch_embed.dynamic_img_pad:
            self._require_multiple(size, tuple(patch_embed.patch_size), "patch size")
        return patch_embed.dynamic_feat_size(size)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(pixels)
        if self.is_token_model:
            prefix = self.model.num_prefix_tokens
            if self.leading_token:  # CLS first; register tokens, if any, follow it and are dropped
                return (
                    features
                    if prefix == 1
                    else torch.cat([features[:, :1], features[:, prefix:]], 1)
                )
            return features[:, prefix:]
        feature_map = self.model.forward_head(features, pre_logits=True)
        if feature_map.ndim != 4:
            raise ValueError(
                f"Encoder {self.name!r}: the timm model's head gave features of shape "
                f"{tuple(feature_map.shape)}, expected a map [B, C, h, w]"
            )
        tokens = rearrange(feature_map, "b c h w -> b (h w) c")
        return (
            torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
            if self.leading_token
            else tokens
        )


def create_timm_encoder(
    name: str,
    model_name: str,
    pretrained: Pretrained = None,
    *,
    default_source: str | None = None,
    keep_cls: bool = True,
    pooled_token: bool = False,
    input_size: Size | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    frozen: bool = True,
    **model_kwargs: Any,
) -> TimmEncoder:
    """Build `timm.create_model(model_name, **model_kwargs)`, with the timm pretrained tag
    (`model_name.tag`) when `pretrained` names one, and wrap it. `input_size` sets a convnet's
    default input size (a ViT's is its `img_size`)."""
    import timm
    from timm.data import resolve_model_data_config

    source = resolve_pretrained(pretrained, default_source)
    full_name = f"{model_name}.{source.library_source}" if source.library_source else model_name
    try:
        with building_on(device, dtype):
            model = timm.create_model(
                full_name,
                pretrained=source.library_source is not None,
                num_classes=0,
                **model_kwargs,
            )
    except (OSError, RuntimeError) as error:  # the hub's errors, network and cache, are OSErrors
        if source.library_source is None:
            raise
        raise RuntimeError(
            f"{name}: could not load timm weights {full_name} (no network and no local cache?): "
            f"{error}. Pass pretrained=<local file or directory> instead."
        ) from error
    data_config = resolve_model_data_config(model)
    encoder = TimmEncoder(
        model,
        name=name,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        input_size=input_size or tuple(data_config["input_size"][1:]),
        keep_cls=keep_cls,
        pooled_token=pooled_token,
    )
    return finish(encoder, source, frozen=frozen)


# -- registered presets (entry-point group sphinx_mllm_encoders) ----------------------------------

DINOV2_SOURCE = "lvd142m"


def _dinov2(
    name: str, model_name: str, pretrained: Pretrained, overrides: dict[str, Any]
) -> TimmEncoder:
    options = {"img_size": 224, **overrides}
    return create_timm_encoder(
        name, model_name, pretrained, default_source=DINOV2_SOURCE, **options
    )


def dinov2_vitg14(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """DINOv2 ViT-g/14 at 224 as SPHINX uses it: CLS + 16x16 patch tokens x 1536, final norm."""
    return _dinov2("dinov2_vitg14", "vit_giant_patch14_dinov2", pretrained, overrides)


def dinov2_vitl14(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """DINOv2 ViT-L/14 at 224: CLS + 16x16 patch tokens x 1024."""
    return _dinov2("dinov2_vitl14", "vit_large_patch14_dinov2", pretrained, overrides)


def dinov2_vitb14(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """DINOv2 ViT-B/14 at 224: CLS + 16x16 patch tokens x 768."""
    return _dinov2("dinov2_vitb14", "vit_base_patch14_dinov2", pretrained, overrides)


def dinov2_vitg14_reg4(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """DINOv2 ViT-g/14 with 4 register tokens at 224: CLS + 16x16 patch tokens (no registers)."""
    return _dinov2("dinov2_vitg14_reg4", "vit_giant_patch14_reg4_dinov2", pretrained, overrides)


def dinov2_vitl14_reg4(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """DINOv2 ViT-L/14 with 4 register tokens at 224: CLS + 16x16 patch tokens (no registers)."""
    return _dinov2("dinov2_vitl14_reg4", "vit_large_patch14_reg4_dinov2", pretrained, overrides)


def siglip_so400m14_384(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """SigLIP SO400M/14 at 384 (timm, WebLI weights): 27x27 patch tokens x 1152, no CLS."""
    return create_timm_encoder(
        "siglip_so400m14_384",
        "vit_so400m_patch14_siglip_384",
        pretrained,
        default_source="webli",
        **overrides,
    )


def convnext_xxlarge_trunk(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """The timm trunk of LAION's CLIP ConvNeXt-XXLarge at 256 as LLaMA2-Accessory stores it in
    SPHINX checkpoints (no open_clip head projection): pooled token + 8x8 grid x 3072. Keywords
    go to timm (`depths`, `dims` for a scaled-down trunk; `input_size`)."""
    options = {"pooled_token": True, "input_size": 256, **overrides}
    return create_timm_encoder("convnext_xxlarge_trunk", "convnext_xxlarge", pretrained, **options)


def timm_encoder(
    pretrained: Pretrained = None, *, model_name: str = "resnet50", **overrides: Any
) -> TimmEncoder:
    """Any timm vision model by name (`model_name`); extra keywords go to timm.create_model."""
    return create_timm_encoder(f"timm[{model_name}]", model_name, pretrained, **overrides)


TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def tiny_dinov2(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """A random-initialised DINOv2-shaped ViT (56 px, patch 14, width 32, 2 layers)."""
    options = {"img_size": 56, **TINY_VIT, **overrides}
    return create_timm_encoder("tiny_dinov2", "vit_small_patch14_dinov2", pretrained, **options)


def tiny_dinov2_reg4(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """A random-initialised DINOv2-shaped ViT with 4 register tokens (56 px, patch 14, width 32)."""
    options = {"img_size": 56, **TINY_VIT, **overrides}
    return create_timm_encoder(
        "tiny_dinov2_reg4", "vit_small_patch14_reg4_dinov2", pretrained, **options
    )


def tiny_siglip(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """A random-initialised SigLIP-shaped ViT without CLS (32 px, patch 16, width 32, 2 layers)."""
    options = {"img_size": 32, **TINY_VIT, **overrides}
    return create_timm_encoder("tiny_siglip", "vit_base_patch16_siglip_224", pretrained, **options)


def tiny_timm_convnet(pretrained: Pretrained = None, **overrides: Any) -> TimmEncoder:
    """A random-initialised timm convnet (test_convnext, 64 px) with a pooled leading token."""
    options = {"pooled_token": True, "input_size": 64, **overrides}
    return create_timm_encoder("tiny_timm_convnet", "test_convnext", pretrained, **options)
