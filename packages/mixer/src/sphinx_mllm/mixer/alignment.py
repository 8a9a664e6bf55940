"""Aligning the token grids of several encoders to one reference grid, so their channels can be
concatenated position by position.

`repeat` is SPHINX's way for ConvNeXt (8x8 -> 16x16: each row and column repeated twice); it
needs an integer factor. `nearest` and `bilinear` take any target; `area` averages and only
shrinks a grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

Grid = tuple[int, int]
ALIGN_METHODS = ("repeat", "nearest", "bilinear", "area")


def check_alignable(source: Grid, target: Grid, method: str, what: str = "grid") -> None:
    """Raise ValueError, naming both grids, when `method` cannot map `source` onto `target`."""
    if method not in ALIGN_METHODS:
        raise ValueError(f"Unknown grid alignment {method!r}; expected one of {ALIGN_METHODS}")
    if source == target:
        return
    (sh, sw), (th, tw) = source, target
    if method == "repeat" and (th % sh or tw % sw):
        raise ValueError(
            f"Cannot align the {sh}x{sw} {what} to {th}x{tw} by repetition (not an integer "
            "factor); use align='nearest', 'bilinear' or 'area'"
        )
    if method == "area" and (th > sh or tw > sw):
        raise ValueError(
            f"Cannot align the {sh}x{sw} {what} to the larger {th}x{tw} by area averaging; use "
            "align='repeat', 'nearest' or 'bilinear'"
        )


def align_grid(grid_map: torch.Tensor, target: Grid, method: str) -> torch.Tensor:
    """`[N, C, h, w]` -> `[N, C, *target]`."""
    source = tuple(grid_map.shape[-2:])
    check_alignable(source, target, method)
    if source == tuple(target):
        return grid_map
    if method == "repeat":
        fh, fw = target[0] // source[0], target[1] // source[1]
        return repeat(grid_map, "n c h w -> n c (h fh) (w fw)", fh=fh, fw=fw)
    if method == "bilinear":
        return F.interpolate(grid_map, size=target, mode="bilinear", align_corners=False)
    return F.interpolate(grid_map, size=target, mode=method)


def tokens_to_map(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Row-major grid tokens `[N, h * w, C]` -> map `[N, C, h, w]`."""
    return rearrange(tokens, "n (h w) c -> n c h w", h=grid[0], w=grid[1])


def map_to_tokens(grid_map: torch.Tensor) -> torch.Tensor:
    """Map `[N, C, h, w]` -> row-major tokens `[N, h * w, C]`."""
    return rearrange(grid_map, "n c h w -> n (h w) c")
