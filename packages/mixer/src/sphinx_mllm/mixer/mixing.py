"""The mixer interface: the encoder outputs of a group of views in, one token sequence per view
out, with its layout declared before running.

A mixer is built from `StreamSpec`s (what each encoder gives at the size it is fed) and the LLM
width; `view_segments(kind)` declares the labelled parts of one view's tokens, so the count is
known before any forward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sphinx_mllm.encoders import EncoderOutput, VisualEncoder
from sphinx_mllm.mixer.alignment import Grid
from sphinx_mllm.mixer.view_tokens import ViewTokenFormat
from sphinx_mllm.mixer.views import ViewKind


@dataclass(frozen=True)
class StreamSpec:
    """What one encoder gives for one view at the size it is fed."""

    name: str
    embed_dim: int
    grid: Grid | None  # None for query tokens
    leading_token: bool
    num_tokens: int

    @classmethod
    def of(cls, name: str, encoder: VisualEncoder, image_size: int | tuple[int, int]) -> StreamSpec:
        return cls(
            name=name,
            embed_dim=encoder.embed_dim,
            grid=encoder.grid_size(image_size),
            leading_token=encoder.leading_token,
            num_tokens=encoder.num_tokens(image_size),
        )


class Mixer(nn.Module, ABC):
    """Base class of the mixers: subclasses implement `view_segments` and `mix`. The base holds
    the view token format (`self.format`: start/end, row separators, tile pooling)."""

    def __init__(
        self,
        streams: Sequence[StreamSpec],
        out_dim: int,
        *,
        wrap_views: bool,
        row_separators: bool = False,
        tile_pool: Grid | None = None,
        tile_pool_mode: str = "bilinear",
        grid_positions: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        streams = list(streams)
        if not streams:
            raise ValueError(f"{type(self).__name__} needs at least one encoder stream")
        names = [stream.name for stream in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: stream names must be unique, got {names}")
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(
                f"{type(self).__name__}: out_dim must be a positive int, got {out_dim!r}"
            )
        self.streams = streams
        self.out_dim = out_dim
        self._counts: dict[str, int] = {}
        self.format = ViewTokenFormat(
            out_dim,
            wrap_views=wrap_views,
            row_separators=row_separators,
            tile_pool=tile_pool,
            tile_pool_mode=tile_pool_mode,
            grid_positions=grid_positions,
            device=device,
            dtype=dtype,
        )

    @abstractmethod
    def view_segments(self, kind: ViewKind) -> list[tuple[str, int]]:
        """The labelled parts (label, token count) of one view's tokens, in order."""

    def num_tokens(self, kind: ViewKind = "global") -> int:
        if kind not in self._counts:  # the configuration is fixed once built
            self._counts[kind] = sum(length for _, length in self.view_segments(kind))
        return self._counts[kind]

    def grid_parts(self) -> list[tuple[str, Grid, bool]]:
        """The grid parts of a view: (segment label, encoder grid, has a leading token) each.
        Mixers that lay encoder grids out in the sequence override this; the default has none."""
        return []

    def grid_cells(self, kind: ViewKind = "global") -> dict[str, torch.Tensor]:
        """For each grid part of a view of `kind`, by segment label: `[rows, cols]` long, the
        index within the view's tokens of the token of each grid cell (row-major, tile pooling
        and row separators applied)."""
        starts, offset = {}, 0
        for label, length in self.view_segments(kind):
            starts[label] = offset
            offset += length
        return {
            label: starts[label] + self.format.cell_indices(grid, leading, kind)
            for label, grid, leading in self.grid_parts()
        }

    @property
    def kind_independent(self) -> bool:
        """True when global and tile views are mixed alike (one call can mix both)."""
        return self.view_segments("global") == self.view_segments("tile")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the mixer's parameters: visual tokens come out in it."""
        for parameter in self.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.get_default_dtype()

    @abstractmethod
    def mix(self, outputs: Sequence[EncoderOutput], kind: ViewKind) -> torch.Tensor:
        """`[V, num_tokens(kind), out_dim]` for validated outputs of V views of one kind."""

    def forward(self, outputs: Sequence[EncoderOutput], kind: ViewKind = "global") -> torch.Tensor:
        self._check(outputs)
        tokens = self.mix(outputs, kind)
        expected = (outputs[0].tokens.shape[0], self.num_tokens(kind), self.out_dim)
        if tuple(tokens.shape) != expected:
            raise RuntimeError(
                f"{type(self).__name__} produced {tuple(tokens.shape)} but declares {expected}"
            )
        return tokens

    def _check(self, outputs: Sequence[EncoderOutput]) -> None:
        if len(outputs) != len(self.streams):
            raise ValueError(
                f"{type(self).__name__} mixes {len(self.streams)} streams "
                f"{[s.name for s in self.streams]}, got {len(outputs)} encoder outputs"
            )
        views = {output.tokens.shape[0] for output in outputs}
        if len(views) != 1:
            raise ValueError(
                f"{type(self).__name__}: every stream must cover the same views, got counts {views}"
            )
        for stream, output in zip(self.streams, outputs, strict=True):
            shape = tuple(output.tokens.shape[1:])
            if shape != (stream.num_tokens, stream.embed_dim) or output.grid != stream.grid:
                raise ValueError(
                    f"{type(self).__name__}: stream {stream.name!r} was declared with "
                    f"{stream.num_tokens} tokens of width {stream.embed_dim} on grid "
                    f"{stream.grid}, got {shape[0]} tokens of width {shape[1]} on grid "
                    f"{output.grid}"
                )
