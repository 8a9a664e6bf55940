"""The learned tokens around and inside each view's token sequence, shared by every mixer:

- start and end vectors around each view (SPHINX's `start_img`/`end_img`: shape [1, 1, d],
  uniform [0, 1) initialisation, shared by all views);
- an optional separator after each row of a grid (LLaVA-NeXT's `image_newline`);
- optional pooling of the grid of tile views (not the global view) to a smaller grid, bilinear,
  SPHINX's token-saving variant (16x16 -> 8x8). The leading token is kept as it is;
- optional fixed 2D sine-cosine position features added to the grid tokens (`grid_positions=
  "sincos"`, no parameters; MAE's 2D embedding, scaled to the tokens' RMS): each grid token then
  says where in the view it lies, which a model trained from scratch otherwise learns slowly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from sphinx_mllm.mixer.alignment import Grid, map_to_tokens, tokens_to_map
from sphinx_mllm.mixer.views import ViewKind

POOL_MODES = ("bilinear", "area", "nearest")
GRID_POSITIONS = (None, "sincos")


def sincos_2d(grid: Grid, dim: int) -> torch.Tensor:
    """`[rows * cols, dim]` fixed 2D sine-cosine features: half the channels encode the row,
    half the column, each as sines and cosines of geometrically spaced frequencies."""
    if dim % 4:
        raise ValueError(f"2D sine-cosine position features need a width divisible by 4, got {dim}")
    rows, cols = grid
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    # the row and the column of each token of the row-major grid
    y = repeat(torch.arange(rows, dtype=torch.float64), "h -> (h w)", w=cols)
    x = repeat(torch.arange(cols, dtype=torch.float64), "w -> (h w)", h=rows)
    parts = []
    for coordinate in (y, x):
        angles = coordinate[:, None] * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class ViewTokenFormat(nn.Module):
    """Start/end wrapping, row separators and tile pooling for views of width `dim`."""

    def __init__(
        self,
        dim: int,
        *,
        wrap_views: bool = True,
        row_separators: bool = False,
        tile_pool: Grid | None = None,
        tile_pool_mode: str = "bilinear",
        grid_positions: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if tile_pool is not None and (len(tile_pool) != 2 or min(tile_pool) < 1):
            raise ValueError(
                f"tile_pool must be a (rows, cols) grid of positive ints, got {tile_pool!r}"
            )
        if grid_positions not in GRID_POSITIONS:
            raise ValueError(
                f"Unknown grid_positions {grid_positions!r}; expected one of {GRID_POSITIONS}"
            )
        if grid_positions == "sincos" and dim % 4:
            raise ValueError(f"grid_positions='sincos' needs a width divisible by 4, got {dim}")
        self.grid_positions = grid_positions
        if tile_pool_mode not in POOL_MODES:
            raise ValueError(
                f"Unknown tile_pool_mode {tile_pool_mode!r}; expected one of {POOL_MODES}"
            )
        self.wrap_views = wrap_views
        self.tile_pool = tuple(tile_pool) if tile_pool is not None else None
        self.tile_pool_mode = tile_pool_mode
        factory = {"device": device, "dtype": dtype}
        self.start = nn.Parameter(torch.rand(1, 1, dim, **factory)) if wrap_views else None
        self.end = nn.Parameter(torch.rand(1, 1, dim, **factory)) if wrap_views else None
        self.row_separator = (
            nn.Parameter(torch.rand(1, 1, dim, **factory)) if row_separators else None
        )

    @property
    def wrap_length(self) -> int:
        return 2 if self.wrap_views else 0

    def output_grid(self, grid: Grid, kind: ViewKind) -> Grid:
        """The grid a view of `kind` keeps after tile pooling."""
        return self.tile_pool if kind == "tile" and self.tile_pool is not None else grid

    def grid_length(self, grid: Grid, leading: bool, kind: ViewKind) -> int:
        """How many tokens a grid part (leading token, rows, separators) becomes."""
        rows, cols = self.output_grid(grid, kind)
        return int(leading) + rows * (cols + int(self.row_separator is not None))

    def cell_indices(self, grid: Grid, leading: bool, kind: ViewKind) -> torch.Tensor:
        """`[rows, cols]` long: where each cell of the (pooled) grid lies within the grid part
        that `format_grid` makes (after the leading token, rows separated when they are)."""
        rows, cols = self.output_grid(grid, kind)
        stride = cols + int(self.row_separator is not None)
        row_starts = torch.arange(rows).unsqueeze(1) * stride
        return int(leading) + row_starts + torch.arange(cols).unsqueeze(0)

    def format_grid(
        self, tokens: torch.Tensor, grid: Grid, leading: bool, kind: ViewKind
    ) -> torch.Tensor:
        """`[V, leading + h * w, d]` -> pooled (for tiles) and row-separated grid tokens."""
        lead, cells = (tokens[:, :1], tokens[:, 1:]) if leading else (tokens[:, :0], tokens)
        target = self.output_grid(grid, kind)
        if target != tuple(grid):
            cells = map_to_tokens(
                F.interpolate(tokens_to_map(cells, grid), size=target, mode=self.tile_pool_mode)
            )
        if self.grid_positions == "sincos":
            positions = sincos_2d(target, cells.shape[-1]).to(cells.device, cells.dtype)
            # each view's own token RMS (so neither drowns, and no view depends on its batch)
            scale = cells.detach().pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
            cells = cells + positions * scale
        if self.row_separator is not None:
            rows = rearrange(cells, "v (h w) d -> v h w d", h=target[0], w=target[1])
            separators = repeat(
                self.row_separator.to(rows.dtype), "1 1 d -> v h 1 d", v=rows.shape[0], h=target[0]
            )
            # each row then its separator: rows of w + 1 tokens
            cells = rearrange(torch.cat([rows, separators], dim=2), "v h w1 d -> v (h w1) d")
        return torch.cat([lead, cells], dim=1)

    def wrap(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[V, T, d]` -> `[V, start + T + end, d]` when views are wrapped."""
        if not self.wrap_views:
            return tokens
        count = tokens.shape[0]
        start = self.start.to(tokens.dtype).expand(count, -1, -1)
        end = self.end.to(tokens.dtype).expand(count, -1, -1)
        return torch.cat([start, tokens, end], dim=1)
