"""A mixer that keeps each encoder's tokens apart: every stream through its own projector, the
results concatenated along the sequence. With one encoder and `mlp2x_gelu` this is LLaVA-1.5's
visual path; with several it lets encoders of any grid be combined without alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sphinx_mllm.encoders import EncoderOutput
from sphinx_mllm.mixer.alignment import Grid
from sphinx_mllm.mixer.mixing import Mixer, StreamSpec
from sphinx_mllm.mixer.projectors import create_projector
from sphinx_mllm.mixer.views import ViewKind


class SequenceConcatMixer(Mixer):
    """Each stream projected on its own; [stream 1 ; stream 2 ; ...] per view."""

    def __init__(
        self,
        streams: Sequence[StreamSpec],
        out_dim: int,
        *,
        projector: str = "mlp2x_gelu",
        wrap_views: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **format_options: Any,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(streams, out_dim, wrap_views=wrap_views, **factory, **format_options)
        self.projectors = nn.ModuleDict(
            {
                s.name: create_projector(projector, s.embed_dim, out_dim, **factory)
                for s in self.streams
            }
        )

    def grid_parts(self) -> list[tuple[str, Grid, bool]]:
        return [(s.name, s.grid, s.leading_token) for s in self.streams if s.grid is not None]

    def view_segments(self, kind: ViewKind) -> list[tuple[str, int]]:
        segments = [
            (
                s.name,
                s.num_tokens
                if s.grid is None
                else self.format.grid_length(s.grid, s.leading_token, kind),
            )
            for s in self.streams
        ]
        if self.format.wrap_views:
            segments = [("start", 1), *segments, ("end", 1)]
        return segments

    def mix(self, outputs: Sequence[EncoderOutput], kind: ViewKind) -> torch.Tensor:
        dtype = self.dtype
        parts = []
        for stream, output in zip(self.streams, outputs, strict=True):
            tokens = self.projectors[stream.name](output.tokens.to(dtype))
            if stream.grid is not None:
                tokens = self.format.format_grid(tokens, stream.grid, stream.leading_token, kind)
            parts.append(tokens)
        return self.format.wrap(torch.cat(parts, dim=1))


def sequence_concat(
    streams: Sequence[StreamSpec], out_dim: int, **options: Any
) -> SequenceConcatMixer:
    """Each encoder through its own projector, concatenated in sequence (LLaVA-1.5's way)."""
    return SequenceConcatMixer(streams, out_dim, **options)
