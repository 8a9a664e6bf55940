"""open_clip Vision Transformers as visual encoders: the CLIP ViT-L/14 of SPHINX, and any open_clip
ViT configuration.

SPHINX (LLaMA2-Accessory, llama_ens.py) takes OpenAI's ViT-L/14 at 224 and keeps all 257 tokens
(CLS first) of the last layer after `ln_post`, without the projection `proj`. Only the vision
tower is built (no text tower). open_clip builds ViT-L-14 with QuickGELU only when it loads the
`openai` weights, while SPHINX's released code builds it with plain GELU: `quick_gelu` is a flag,
off by default in the SPHINX preset for that reason.
"""

from __future__ import annotations

from typing import Any

import torch

from sphinx_mllm.encoders.base import Grid, VisualEncoder
from sphinx_mllm.encoders.building import Pretrained
from sphinx_mllm.encoders.open_clip_towers import create_open_clip_encoder
from sphinx_mllm.encoders.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Size, Stats, to_size


class OpenClipViT(VisualEncoder):
    """Tokens of an open_clip `VisionTransformer` at one layer: CLS then the patch grid."""

    checkpoint_prefixes = ("visual.", "")

    def __init__(
        self,
        visual: torch.nn.Module,
        *,
        name: str,
        mean: Stats = OPENAI_CLIP_MEAN,
        std: Stats = OPENAI_CLIP_STD,
        feature_layer: int = -1,
        normalize: bool = True,
        keep_cls: bool = True,
        project: bool = False,
    ) -> None:
        if not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
            raise ValueError(f"{name}: the open_clip tower is {type(visual).__name__}, not a ViT")
        num_layers = len(visual.transformer.resblocks)
        if not -num_layers <= feature_layer < num_layers:
            raise ValueError(
                f"{name}: feature_layer {feature_layer} is outside its {num_layers} layers"
            )
        if project and visual.proj is None:
            raise ValueError(f"{name}: project=True but this vision tower has no projection")
        width = visual.conv1.out_channels
        super().__init__(
            name=name,
            input_size=visual.image_size,
            mean=mean,
            std=std,
            embed_dim=visual.proj.shape[1] if project else width,
            leading_token=keep_cls,
        )
        self.model = visual
        self.patch_size = to_size(visual.patch_size)
        self.layer_index = feature_layer % num_layers
        self.normalize = normalize
        self.project = project

    def grid_size(self, image_size: Size | None = None) -> Grid:
        size = self._size(image_size)
        self._require_size(
            size, self.input_size, " (its position embeddings are learned for that size)"
        )
        return size[0] // self.patch_size[0], size[1] // self.patch_size[1]

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(
            pixels,
            indices=[self.layer_index],
            stop_early=True,
            normalize_intermediates=self.normalize,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        patches = out["image_intermediates"][0]
        tokens = (
            torch.cat([out["image_intermediates_prefix"][0], patches], dim=1)
            if self.leading_token
            else patches
        )
        return tokens @ self.model.proj if self.project else tokens


# -- registered presets (entry-point group sphinx_mllm_encoders) ----------------------------------


def clip_vit_l14(pretrained: Pretrained = None, **overrides: Any) -> OpenClipViT:
    """OpenAI CLIP ViT-L/14 at 224 as SPHINX uses it: 257 tokens x 1024 after ln_post, no proj."""
    return create_open_clip_encoder(
        OpenClipViT, "clip_vit_l14", "ViT-L-14", pretrained, default_source="openai", **overrides
    )


def clip_vit_l14_336(pretrained: Pretrained = None, **overrides: Any) -> OpenClipViT:
    """OpenAI CLIP ViT-L/14 at 336: 577 tokens x 1024 after ln_post, no proj."""
    return create_open_clip_encoder(
        OpenClipViT,
        "clip_vit_l14_336",
        "ViT-L-14-336",
        pretrained,
        default_source="openai",
        **overrides,
    )


def clip_vit_b16(pretrained: Pretrained = None, **overrides: Any) -> OpenClipViT:
    """OpenAI CLIP ViT-B/16 at 224: 197 tokens x 768 after ln_post, no proj."""
    return create_open_clip_encoder(
        OpenClipViT, "clip_vit_b16", "ViT-B-16", pretrained, default_source="openai", **overrides
    )


def open_clip_vit(
    pretrained: Pretrained = None, *, model_name: str = "ViT-B-32", **overrides: Any
) -> OpenClipViT:
    """Any open_clip ViT config by name (`model_name`), e.g. ViT-H-14 with tag laion2b_s32b_b79k."""
    return create_open_clip_encoder(
        OpenClipViT, f"open_clip_vit[{model_name}]", model_name, pretrained, **overrides
    )


TINY_CLIP_VIT_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
}


def tiny_clip_vit(pretrained: Pretrained = None, **overrides: Any) -> OpenClipViT:
    """A random-initialised open_clip ViT (32 px, patch 8, width 32, 2 layers), for tests."""
    return create_open_clip_encoder(
        OpenClipViT, "tiny_clip_vit", TINY_CLIP_VIT_CONFIG, pretrained, **overrides
    )
