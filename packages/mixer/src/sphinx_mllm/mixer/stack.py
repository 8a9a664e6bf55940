"""The visual stack: view splitter + encoders + mixer. Images in, visual tokens `[B, N, d]` out,
with the layout of every token (which view, which stream).

`preprocess(image)` splits one PIL image into views in [0, 1] (it can run in data-loader
workers); `forward(views)` resizes the views for each encoder (its own side and interpolation,
e.g. SPHINX's ConvNeXt sees the 224 views repeated to 256), normalises them with the encoder's
own statistics, runs all views of the batch through each encoder as one batch, and mixes them.
Views of one image: the global view first, then the tiles. Token counts are declared before any
forward (`num_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from PIL import Image
from torch import nn

from sphinx_mllm.encoders import EncoderOutput, VisualEncoder, create_encoder
from sphinx_mllm.encoders.transforms import normalize
from sphinx_mllm.mixer.mixing import Mixer, StreamSpec
from sphinx_mllm.mixer.registry import get_mixer, get_view_splitter
from sphinx_mllm.mixer.resizing import RESIZE_MODES, canvas_views, resize_views
from sphinx_mllm.mixer.splitters import ViewSplitter
from sphinx_mllm.mixer.views import ViewKind, ViewLayout

RESAMPLE_SOURCES = ("view", "canvas")


@dataclass(frozen=True)
class EncoderStream:
    """One encoder of the stack and how views are fed to it: resized to `image_size` (default:
    the encoder's input size) with `resize` interpolation.

    `half_precision_resize` passes the views through the interpolation in float16 even at equal
    sizes, as SPHINX's released code does (see `resizing`). `resample_from="canvas"` makes this
    stream's views from the whole padded canvas rather than from the splitter's views: the
    global view is the canvas resized to the stream's side, the tiles are cut from the canvas
    resized to k x that side (SPHINX-Tiny-1k feeds DINOv2 so); it needs a square tile grid."""

    encoder: VisualEncoder
    image_size: int | None = None
    resize: str = "bicubic"
    name: str | None = None
    half_precision_resize: bool = False
    resample_from: str = "view"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"Unknown resize {self.resize!r} for a stream; expected one of {RESIZE_MODES}"
            )
        if self.resample_from not in RESAMPLE_SOURCES:
            raise ValueError(
                f"Unknown resample_from {self.resample_from!r} for a stream; expected one of "
                f"{RESAMPLE_SOURCES}"
            )

    @property
    def size(self) -> tuple[int, int]:
        if self.image_size is None:
            return self.encoder.input_size
        return (self.image_size, self.image_size)


@dataclass(frozen=True)
class Segment:
    """Tokens `start:end` of an image's visual tokens come from `label` of view `view`."""

    view: int
    label: str
    start: int
    end: int


@dataclass
class VisualTokens:
    """Visual tokens of a batch: `tokens [B, N, d]` (padded to the longest image when images give
    different counts), the true count of each, and each image's segments."""

    tokens: torch.Tensor
    lengths: list[int]
    segments: list[list[Segment]] = field(repr=False)

    @property
    def mask(self) -> torch.Tensor:
        """`[B, N]`, True on real tokens."""
        positions = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return positions < torch.tensor(self.lengths, device=self.tokens.device).unsqueeze(1)


def _unique_names(streams: Sequence[EncoderStream]) -> list[str]:
    names, seen = [], {}
    for stream in streams:
        base = stream.name or stream.encoder.name
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base] - 1}")
    return names


class VisualStack(nn.Module):
    """Splitter + encoders + mixer: images to visual tokens for an LLM."""

    def __init__(
        self,
        splitter: ViewSplitter | str,
        streams: Sequence[EncoderStream | VisualEncoder | str],
        mixer: Mixer | str = "channel_concat",
        *,
        out_dim: int | None = None,
        splitter_options: Mapping[str, Any] | None = None,
        mixer_options: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(splitter, str):
            splitter = get_view_splitter(splitter)(**(splitter_options or {}))
        self.splitter = splitter
        streams = [self._as_stream(stream, device) for stream in streams]
        if not streams:
            raise ValueError("A visual stack needs at least one encoder")
        self.stream_names = _unique_names(streams)
        self.streams = dict(zip(self.stream_names, streams, strict=True))
        self.encoders = nn.ModuleDict(
            {name: stream.encoder for name, stream in self.streams.items()}
        )
        specs = [
            StreamSpec.of(name, stream.encoder, stream.size)
            for name, stream in self.streams.items()
        ]
        if isinstance(mixer, str):
            if out_dim is None:
                raise ValueError(
                    f"Building the mixer {mixer!r} by name needs out_dim (the LLM width)"
                )
            mixer = get_mixer(mixer)(
                specs, out_dim, device=device, dtype=dtype, **(mixer_options or {})
            )
        elif [spec.name for spec in mixer.streams] != self.stream_names:
            raise ValueError(
                f"The mixer was built for streams {[s.name for s in mixer.streams]}, the stack has "
                f"{self.stream_names}"
            )
        self.mixer = mixer
        self._segment_cache: dict[tuple[ViewKind, ...], list[Segment]] = {}

    @staticmethod
    def _as_stream(stream: EncoderStream | VisualEncoder | str, device: Any) -> EncoderStream:
        if isinstance(stream, str):
            stream = create_encoder(stream, device=device)
        return stream if isinstance(stream, EncoderStream) else EncoderStream(stream)

    # -- declared before running -----------------------------------------------------------------

    @property
    def out_dim(self) -> int:
        return self.mixer.out_dim

    def layout(self, image_size: tuple[int, int] | None = None) -> ViewLayout:
        """The views of an image of (width, height) `image_size` (default: a square)."""
        side = self.splitter.base_size
        return self.splitter.layout(image_size or (side, side))

    def num_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Visual tokens per image of (width, height) `image_size`, before running anything."""
        return sum(self.mixer.num_tokens(kind) for kind in self.layout(image_size).kinds)

    def grid_tokens_at(
        self,
        image_size: tuple[int, int],
        points: Sequence[tuple[float, float]] | torch.Tensor,
        part: str | None = None,
    ) -> torch.Tensor:
        """`[P]` long: the index, in the visual tokens of an image of (width, height)
        `image_size`, of the global view's grid token under each point (x, y) in the image's own
        pixels (the padding and resizing of the view applied). `part` names the grid segment
        when the mixer lays out several (one per encoder in `sequence_concat`)."""
        cells = self.mixer.grid_cells("global")
        if not cells:
            raise ValueError(
                f"{type(self.mixer).__name__} lays out no grid tokens (query encoders only), so "
                "no token lies under a point"
            )
        if part is None:
            if len(cells) > 1:
                raise ValueError(f"The mixer has grid parts {sorted(cells)}; choose one with part=")
            part = next(iter(cells))
        if part not in cells:
            raise ValueError(f"Unknown grid part {part!r}; the mixer has {sorted(cells)}")
        points = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
        layout = self.layout(image_size)
        # image pixels -> canvas pixels is an offset and a scale: the canvas box of pixel (0, 0)
        x0, y0, x1, y1 = layout.image_to_canvas((0.0, 0.0, 1.0, 1.0))
        canvas_w, canvas_h = layout.canvas_size  # the global view is the whole canvas
        table = cells[part]
        rows, cols = table.shape
        x = (x0 + points[:, 0] * (x1 - x0)) / canvas_w
        y = (y0 + points[:, 1] * (y1 - y0)) / canvas_h
        col = (x * cols).floor().long().clamp(0, cols - 1)
        row = (y * rows).floor().long().clamp(0, rows - 1)
        return table[row, col]

    def segments(self, kinds: Sequence[ViewKind]) -> list[Segment]:
        """The labelled token ranges of an image whose views have `kinds`."""
        kinds = tuple(kinds)
        if kinds not in self._segment_cache:
            self._segment_cache[kinds] = self._layout_segments(kinds)
        return self._segment_cache[kinds]

    def _layout_segments(self, kinds: tuple[ViewKind, ...]) -> list[Segment]:
        segments, offset = [], 0
        for view, kind in enumerate(kinds):
            for label, length in self.mixer.view_segments(kind):
                segments.append(Segment(view, label, offset, offset + length))
                offset += length
        return segments

    # -- running ---------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, ViewLayout]:
        """One image -> its views `[V, 3, s, s]` in [0, 1] and their layout."""
        return self.splitter.split(image)

    def encode_images(self, images: Sequence[Image.Image]) -> VisualTokens:
        """Preprocess and encode PIL images in one call."""
        return self(self.preprocess_batch(images))

    def preprocess_batch(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        return [self.preprocess(image)[0] for image in images]

    def forward(self, views: torch.Tensor | Sequence[torch.Tensor]) -> VisualTokens:
        """`views`: `[B, V, 3, s, s]`, or a list of `[V_i, 3, s, s]` when images give different
        view counts (anyres); view 0 of each image is its global view."""
        per_image = (
            list(views.unbind(0))
            if isinstance(views, torch.Tensor) and views.ndim == 5
            else list(views)
        )
        self._check_views(per_image)
        counts = [image_views.shape[0] for image_views in per_image]
        all_views = torch.cat(per_image)
        outputs = [self._encode(name, all_views, counts) for name in self.stream_names]
        if self.mixer.kind_independent:  # one call mixes every view; images are runs of views
            mixed = self.mixer(outputs, "global")
            if len(set(counts)) == 1:
                tokens = rearrange(mixed, "(b v) t d -> b (v t) d", b=len(counts))
                return self._tokens(tokens, [tokens.shape[1]] * len(counts), counts)
            sequences = [rearrange(views, "v t d -> (v t) d") for views in mixed.split(counts)]
        else:
            sequences = self._mix_by_kind(outputs, counts)
        lengths = [len(sequence) for sequence in sequences]
        tokens = (
            torch.stack(sequences)
            if len(set(lengths)) == 1
            else nn.utils.rnn.pad_sequence(sequences, batch_first=True)
        )
        return self._tokens(tokens, lengths, counts)

    def _mix_by_kind(self, outputs: list[EncoderOutput], counts: list[int]) -> list[torch.Tensor]:
        """Per-image sequences when global views and tiles are mixed differently (tile pooling)."""
        starts = [sum(counts[:image]) for image in range(len(counts))]
        global_index = torch.tensor(starts, dtype=torch.long)
        tile_index = torch.tensor(
            [s + i for s, c in zip(starts, counts, strict=True) for i in range(1, c)],
            dtype=torch.long,
        )
        mixed_global = self.mixer([_select(output, global_index) for output in outputs], "global")
        if len(tile_index) == 0:
            return list(mixed_global)
        mixed_tiles = self.mixer([_select(output, tile_index) for output in outputs], "tile")
        tiles = mixed_tiles.split([count - 1 for count in counts])
        return [
            torch.cat([global_tokens, rearrange(image_tiles, "v t d -> (v t) d")])
            for global_tokens, image_tiles in zip(mixed_global, tiles, strict=True)
        ]

    def _tokens(self, tokens: torch.Tensor, lengths: list[int], counts: list[int]) -> VisualTokens:
        segments = [self.segments(("global",) + ("tile",) * (count - 1)) for count in counts]
        return VisualTokens(tokens=tokens, lengths=lengths, segments=segments)

    def _check_views(self, per_image: list[torch.Tensor]) -> None:
        side = self.splitter.base_size
        if not per_image:
            raise ValueError("No images to encode")
        for index, image_views in enumerate(per_image):
            if image_views.ndim != 4 or tuple(image_views.shape[1:]) != (3, side, side):
                raise ValueError(
                    f"Image {index}: views must be [V, 3, {side}, {side}] (the splitter's base "
                    f"side), got {tuple(image_views.shape)}; stack.preprocess(image) makes them"
                )

    def _encode(
        self, name: str, views: torch.Tensor, counts: list[int] | None = None
    ) -> EncoderOutput:
        """The stream `name`'s tokens for `views` of images holding `counts` views each
        (default: one each)."""
        stream = self.streams[name]
        counts = counts or [1] * views.shape[0]
        encoder = stream.encoder
        pixels = views.to(torch.float32) if views.dtype != torch.float32 else views
        half = stream.half_precision_resize
        if stream.resample_from == "canvas" and max(counts) > 1:
            pixels = torch.cat(
                [
                    canvas_views(image_views, stream.size, stream.resize, half_precision=half)
                    for image_views in pixels.split(counts)
                ]
            )
        elif half or tuple(pixels.shape[-2:]) != stream.size:
            pixels = resize_views(pixels, stream.size, stream.resize, half_precision=half)
        return encoder(normalize(pixels, encoder.mean, encoder.std))


def _select(output: EncoderOutput, index: torch.Tensor) -> EncoderOutput:
    return EncoderOutput(
        output.tokens[index.to(output.tokens.device)], output.grid, output.leading_token
    )
