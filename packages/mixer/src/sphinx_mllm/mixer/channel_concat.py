"""SPHINX's mixer: grid encoders aligned and concatenated channel-wise, then one projector; query
encoders (the Q-Former) each through their own projector; sequence [queries ; grid], each view
wrapped in learned start and end vectors (LLaMA2-Accessory, llama_ens.py, `encode_image`).

Token 0 of the grid part is the channel concatenation of the encoders' leading tokens: their own
CLS, or for an encoder without one the mean of its grid tokens (SPHINX's pooled ConvNeXt token).
Tile pooling (the token-saving variant) pools the projected grid of tile views; SPHINX's released
code does not show whether it pools before or after the projection, so after is a choice here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sphinx_mllm.encoders import EncoderOutput
from sphinx_mllm.mixer.alignment import (
    Grid,
    align_grid,
    check_alignable,
    map_to_tokens,
    tokens_to_map,
)
from sphinx_mllm.mixer.mixing import Mixer, StreamSpec
from sphinx_mllm.mixer.projectors import create_projector
from sphinx_mllm.mixer.views import ViewKind


class ChannelConcatMixer(Mixer):
    """Channel concatenation of aligned grids + projected query streams, per view."""

    def __init__(
        self,
        streams: Sequence[StreamSpec],
        out_dim: int,
        *,
        projector: str = "linear_ln",
        query_projector: str = "linear_ln",
        align: str = "repeat",
        grid: Grid | None = None,
        leading_token: bool = True,
        wrap_views: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **format_options: Any,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(streams, out_dim, wrap_views=wrap_views, **factory, **format_options)
        self.grid_streams = [stream for stream in self.streams if stream.grid is not None]
        self.query_streams = [stream for stream in self.streams if stream.grid is None]
        self.align = align
        self.leading_token = leading_token
        self.grid = tuple(grid) if grid is not None else self._largest_grid()
        for stream in self.grid_streams:
            check_alignable(stream.grid, self.grid, align, what=f"grid of {stream.name!r}")
        in_dim = sum(stream.embed_dim for stream in self.grid_streams)
        self.grid_projector = (
            create_projector(projector, in_dim, out_dim, **factory) if in_dim else None
        )
        self.query_projectors = nn.ModuleDict(
            {
                s.name: create_projector(query_projector, s.embed_dim, out_dim, **factory)
                for s in self.query_streams
            }
        )

    def _largest_grid(self) -> Grid | None:
        grids = [stream.grid for stream in self.grid_streams]
        return max(grids, key=lambda grid: grid[0] * grid[1]) if grids else None

    def grid_parts(self) -> list[tuple[str, Grid, bool]]:
        return [("grid", self.grid, self.leading_token)] if self.grid_streams else []

    def view_segments(self, kind: ViewKind) -> list[tuple[str, int]]:
        segments = [(stream.name, stream.num_tokens) for stream in self.query_streams]
        if self.grid_streams:
            segments.append(("grid", self.format.grid_length(self.grid, self.leading_token, kind)))
        if self.format.wrap_views:
            segments = [("start", 1), *segments, ("end", 1)]
        return segments

    def mix(self, outputs: Sequence[EncoderOutput], kind: ViewKind) -> torch.Tensor:
        by_name = dict(zip((stream.name for stream in self.streams), outputs, strict=True))
        dtype = self.dtype
        parts = [
            self.query_projectors[stream.name](by_name[stream.name].tokens.to(dtype))
            for stream in self.query_streams
        ]
        if self.grid_streams:
            features = self._concatenated_grid(
                [by_name[stream.name] for stream in self.grid_streams], dtype
            )
            tokens = self.grid_projector(features)
            parts.append(self.format.format_grid(tokens, self.grid, self.leading_token, kind))
        return self.format.wrap(torch.cat(parts, dim=1))

    def _concatenated_grid(self, outputs: list[EncoderOutput], dtype: torch.dtype) -> torch.Tensor:
        """`[V, leading + H * W, sum of widths]` on the reference grid."""
        maps, leads = [], []
        for stream, output in zip(self.grid_streams, outputs, strict=True):
            cells = output.grid_tokens.to(dtype)
            maps.append(align_grid(tokens_to_map(cells, stream.grid), self.grid, self.align))
            if self.leading_token:
                leads.append(
                    output.tokens[:, 0].to(dtype) if output.leading_token else cells.mean(dim=1)
                )
        grid_tokens = map_to_tokens(torch.cat(maps, dim=1))
        if not self.leading_token:
            return grid_tokens
        return torch.cat([torch.cat(leads, dim=-1).unsqueeze(1), grid_tokens], dim=1)


def channel_concat(
    streams: Sequence[StreamSpec], out_dim: int, **options: Any
) -> ChannelConcatMixer:
    """SPHINX's mixer: aligned grids concatenated channel-wise and projected, query streams
    projected on their own, [queries ; grid] wrapped in start/end vectors per view."""
    return ChannelConcatMixer(streams, out_dim, **options)
