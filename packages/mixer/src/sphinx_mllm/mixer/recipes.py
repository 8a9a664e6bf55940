"""The visual stacks of the SPHINX family as configurations of the shared parts
(`../shared/reference/sphinx_recipe.md`, "Scales and sub-images").

| variant | views | encoders (side fed) | tokens per image |
|---|---|---|---|
| sphinx | 1 at 224 | CLIP-L/14 224, ConvNeXt-XXL 256 (repeated), DINOv2-g 224, Q-Former | 291 |
| sphinx-1k | global + 2x2 of 224 | same | 1455 |
| sphinx-2k | global + 3x3 of 224 | same | 2910 |
| sphinx-1k-pooled | as sphinx-1k, tile grids pooled 16x16 -> 8x8 | same | 687 |
| sphinx-tiny | 1 at 512 | ConvNeXt-XXL 512, DINOv2-g 224 | 259 |
| sphinx-tiny-1k | global + 2x2 of 512 | same | 1295 |

The SPHINX-Tiny DINOv2 size is not shown by the released code; ViT-g/14 is assumed (any size
gives the same token count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sphinx_mllm.encoders import create_encoder
from sphinx_mllm.mixer.stack import EncoderStream, VisualStack

SPHINX_ENCODERS = (
    ("clip_vit_l14", 224, "bicubic"),
    ("clip_convnext_xxlarge", 256, "nearest"),  # SPHINX repeats the 224 view to 256
    ("dinov2_vitg14", 224, "bicubic"),
    ("blip2_qformer_opt2_7b", 224, "bicubic"),
)
SPHINX_TINY_ENCODERS = (
    ("clip_convnext_xxlarge", 512, "bicubic"),
    ("dinov2_vitg14", 224, "bicubic"),
)


@dataclass(frozen=True)
class StackRecipe:
    """A visual stack as data: splitter, encoders (name, side fed, resize), mixer options."""

    splitter: str
    splitter_options: dict[str, Any]
    encoders: tuple[tuple[str, int, str], ...]
    mixer: str = "channel_concat"
    mixer_options: dict[str, Any] = field(default_factory=dict)


SPHINX_STACKS = {
    "sphinx": StackRecipe("single", {"base_size": 224}, SPHINX_ENCODERS),
    "sphinx-1k": StackRecipe("global_grid", {"base_size": 224, "grid": 2}, SPHINX_ENCODERS),
    "sphinx-2k": StackRecipe("global_grid", {"base_size": 224, "grid": 3}, SPHINX_ENCODERS),
    "sphinx-1k-pooled": StackRecipe(
        "global_grid",
        {"base_size": 224, "grid": 2},
        SPHINX_ENCODERS,
        mixer_options={"tile_pool": (8, 8)},
    ),
    "sphinx-tiny": StackRecipe("single", {"base_size": 512}, SPHINX_TINY_ENCODERS),
    "sphinx-tiny-1k": StackRecipe(
        "global_grid", {"base_size": 512, "grid": 2}, SPHINX_TINY_ENCODERS
    ),
}


def build_stack(
    recipe: StackRecipe,
    out_dim: int,
    *,
    pretrained: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisualStack:
    """Build the stack a recipe describes; `pretrained` maps encoder names to their weights."""
    streams = [
        EncoderStream(
            create_encoder(
                name, pretrained=(pretrained or {}).get(name), device=device, dtype=dtype
            ),
            image_size=side,
            resize=resize,
        )
        for name, side, resize in recipe.encoders
    ]
    return VisualStack(
        recipe.splitter,
        streams,
        recipe.mixer,
        out_dim=out_dim,
        splitter_options=recipe.splitter_options,
        mixer_options=recipe.mixer_options,
        device=device,
        dtype=dtype,
    )


def sphinx_visual_stack(
    variant: str = "sphinx", out_dim: int = 5120, **options: Any
) -> VisualStack:
    """The visual stack of a SPHINX variant (see the table above); d = 5120 for LLaMA-2-13B."""
    if variant not in SPHINX_STACKS:
        raise ValueError(
            f"Unknown SPHINX variant {variant!r}; expected one of {sorted(SPHINX_STACKS)}"
        )
    return build_stack(SPHINX_STACKS[variant], out_dim, **options)
