"""Resizing view tensors, optionally in half precision as LLaMA2-Accessory does.

Views are kept in [0, 1]. SPHINX's released code instead resizes its CLIP-normalised image
tensor, and casts it to float16 first (`F.interpolate(image.half(), ...)`): the 1k variants'
global view and the ConvNeXt input. `half_precision=True` reproduces that rounding: the views
are CLIP-normalised, cast to float16, resized, cast back and un-normalised, so the encoder that
normalises them again sees what the reference code feeds it (to float32 rounding). Without it the
resize runs in float32; interpolation and normalisation are both linear per channel, so the order
does not matter there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from sphinx_mllm.encoders.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize

RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area")


def resize_views(
    views: torch.Tensor, size: tuple[int, int], mode: str, *, half_precision: bool = False
) -> torch.Tensor:
    """`views [N, 3, h, w]` in [0, 1] resized to `size` (height, width) with `mode`
    (`F.interpolate`'s defaults: no antialiasing, legacy `nearest`)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"Unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if not half_precision:
        return F.interpolate(views, size=size, mode=mode)
    normalised = normalize(views, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).half()
    resized = F.interpolate(normalised, size=size, mode=mode).to(views.dtype)
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=views.dtype, device=views.device).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=views.dtype, device=views.device).view(3, 1, 1)
    return resized * std + mean


def canvas_views(
    views: torch.Tensor, size: tuple[int, int], mode: str, *, half_precision: bool = False
) -> torch.Tensor:
    """One image's views `[1 + k*k, 3, s, s]` (global view, then the k x k tiles in raster order)
    made again at `size` from the canvas the tiles cover: the global view is the canvas resized
    to `size`, the tiles are cut from the canvas resized to k x `size`. Unlike resizing each
    view, this reads across tile borders, as a resize of the whole image does."""
    grid = math.isqrt(views.shape[0] - 1)
    if views.shape[0] < 2 or grid * grid != views.shape[0] - 1:
        raise ValueError(
            f"Resampling from the canvas needs a global view and a square grid of tiles, got "
            f"{views.shape[0]} views"
        )
    canvas = rearrange(views[1:], "(r c) ch h w -> 1 ch (r h) (c w)", r=grid)
    height, width = size
    whole = resize_views(canvas, size, mode, half_precision=half_precision)
    tiles = resize_views(canvas, (grid * height, grid * width), mode, half_precision=half_precision)
    tiles = rearrange(tiles, "1 ch (r h) (c w) -> (r c) ch h w", r=grid, c=grid)
    return torch.cat([whole, tiles])
