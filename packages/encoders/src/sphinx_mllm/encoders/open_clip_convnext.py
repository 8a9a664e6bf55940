"""open_clip ConvNeXt towers as visual encoders: the CLIP ConvNeXt-XXLarge of SPHINX, and any
open_clip config whose vision tower is a timm ConvNeXt.

SPHINX (llama_ens.py) removes the head's global pooling and flattening from the timm trunk, so the
head's LayerNorm is applied to the final stride-32 map: 8x8x3072 at 256 px. Those are the grid
tokens here; a global-average-pooled token (the mean of the normed map, which equals SPHINX's mean
over its 2x-repeated 16x16 map) optionally leads. The 2x repetition itself is the mixer's grid
alignment. open_clip's projection `head.proj` is kept but not applied unless `project=True`.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from sphinx_mllm.encoders.base import Grid, VisualEncoder
from sphinx_mllm.encoders.building import Pretrained
from sphinx_mllm.encoders.open_clip_towers import create_open_clip_encoder
from sphinx_mllm.encoders.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Size, Stats


class OpenClipConvNeXt(VisualEncoder):
    """Head-normed final feature map of an open_clip timm ConvNeXt tower, as grid tokens."""

    checkpoint_prefixes = ("visual.", "")

    def __init__(
        self,
        visual: torch.nn.Module,
        *,
        name: str,
        mean: Stats = OPENAI_CLIP_MEAN,
        std: Stats = OPENAI_CLIP_STD,
        pooled_token: bool = True,
        project: bool = False,
    ) -> None:
        trunk = getattr(visual, "trunk", None)
        if not hasattr(trunk, "stages") or not hasattr(trunk.head, "norm"):
            raise ValueError(
                f"{name}: the open_clip tower's trunk is {type(trunk).__name__}, not a ConvNeXt"
            )
        # SPHINX's surgery: keep the head's norm, drop its pooling and flattening.
        trunk.reset_classifier(0, global_pool="")
        proj = getattr(visual.head, "proj", None)
        if project and proj is None:
            raise ValueError(f"{name}: project=True but this tower has no linear projection")
        super().__init__(
            name=name,
            input_size=visual.image_size,
            mean=mean,
            std=std,
            embed_dim=proj.out_features if project else trunk.num_features,
            leading_token=pooled_token,
        )
        self.model = visual
        self.stride = trunk.feature_info[-1]["reduction"]
        self.project = project

    def grid_size(self, image_size: Size | None = None) -> Grid:
        height, width = self._size(image_size)
        self._require_multiple((height, width), (self.stride, self.stride), "stride")
        return height // self.stride, width // self.stride

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        trunk = self.model.trunk
        feature_map = trunk.forward_head(trunk.forward_features(pixels), pre_logits=True)
        tokens = rearrange(feature_map, "b c h w -> b (h w) c")
        if self.leading_token:
            tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.model.head.proj(tokens) if self.project else tokens


# -- registered presets (entry-point group sphinx_mllm_encoders) ----------------------------------


def clip_convnext_xxlarge(pretrained: Pretrained = None, **overrides: Any) -> OpenClipConvNeXt:
    """LAION CLIP ConvNeXt-XXLarge at 256 as SPHINX uses it: pooled token + 8x8 grid x 3072."""
    return create_open_clip_encoder(
        OpenClipConvNeXt,
        "clip_convnext_xxlarge",
        "convnext_xxlarge",
        pretrained,
        default_source="laion2b_s34b_b82k_augreg_soup",
        **overrides,
    )


def open_clip_convnext(
    pretrained: Pretrained = None, *, model_name: str = "convnext_base", **overrides: Any
) -> OpenClipConvNeXt:
    """Any open_clip ConvNeXt config by name (`model_name`), e.g. convnext_large_d_320."""
    return create_open_clip_encoder(
        OpenClipConvNeXt, f"open_clip_convnext[{model_name}]", model_name, pretrained, **overrides
    )


TINY_CLIP_CONVNEXT_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {
        "timm_model_name": "test_convnext",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 64,
    },
}


def tiny_clip_convnext(pretrained: Pretrained = None, **overrides: Any) -> OpenClipConvNeXt:
    """A random-initialised open_clip ConvNeXt (timm test_convnext, 64 px) for tests and demos."""
    return create_open_clip_encoder(
        OpenClipConvNeXt, "tiny_clip_convnext", TINY_CLIP_CONVNEXT_CONFIG, pretrained, **overrides
    )
