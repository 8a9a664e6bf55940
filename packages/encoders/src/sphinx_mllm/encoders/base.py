"""The interface every visual encoder implements: `VisualEncoder` and its `EncoderOutput`.

An encoder takes a pixel batch `[B, 3, H, W]`, already transformed for it (`encoder.transform`),
and returns tokens `[B, N, C]` with the facts a mixer needs: the token grid `(h, w)` (None for
query tokens such as the Q-Former's) and whether a CLS or pooled token leads. Shape facts are
known before any forward (`embed_dim`, `grid_size`, `num_tokens`), so the data side can budget
sequence length. Encoders are frozen by default: eval mode, no gradients, run without autograd.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from einops import rearrange
from torch import nn

from sphinx_mllm.encoders.transforms import ImageTransform, Size, to_size
from sphinx_mllm.encoders.weights import LoadReport, load_weights, save_weights

Grid: TypeAlias = tuple[int, int]


@dataclass(frozen=True)
class EncoderOutput:
    """Visual tokens of one encoder: `tokens [B, N, C]`, `N = leading_token + h * w`
    for grid encoders, or the number of queries when `grid` is None."""

    tokens: torch.Tensor
    grid: Grid | None
    leading_token: bool

    @property
    def grid_tokens(self) -> torch.Tensor:
        """The tokens without the leading CLS/pooled token."""
        return self.tokens[:, 1:] if self.leading_token else self.tokens

    @property
    def grid_map(self) -> torch.Tensor:
        """Grid tokens as a map `[B, C, h, w]` (row-major, as the tokens are ordered)."""
        if self.grid is None:
            raise ValueError("Query tokens have no grid to reshape into a map")
        height, width = self.grid
        return rearrange(self.grid_tokens, "b (h w) c -> b c h w", h=height, w=width)


class VisualEncoder(nn.Module, ABC):
    """Base class of all encoder adapters; subclasses implement `grid_size` and `_encode`.

    A subclass keeps the wrapped library module as `self.model`: its state dict is what
    `save_weights` writes and `load_weights` reads. `checkpoint_prefixes` lists the prefixes
    under which a larger checkpoint holds that module (e.g. `visual.` in a whole open_clip CLIP);
    `ignored_checkpoint_prefixes` the parts of such a checkpoint the encoder does not use.
    """

    checkpoint_prefixes: tuple[str, ...] = ("",)
    ignored_checkpoint_prefixes: tuple[str, ...] = ()
    model: nn.Module

    def __init__(
        self,
        *,
        name: str,
        input_size: Size,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        embed_dim: int,
        leading_token: bool,
        num_queries: int | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.input_size = to_size(input_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.embed_dim = embed_dim
        self.leading_token = leading_token
        self.num_queries = num_queries
        self._frozen = False
        self._dtype: torch.dtype | None = None

    # -- shape facts, known before any forward ---------------------------------------------------

    @abstractmethod
    def grid_size(self, image_size: Size | None = None) -> Grid | None:
        """The token grid `(h, w)` for an input of `image_size` (default: `input_size`), or
        None for query tokens; raises ValueError for a size this encoder cannot take."""

    def _size(self, image_size: Size | None) -> tuple[int, int]:
        return self.input_size if image_size is None else to_size(image_size)

    def _require_size(
        self, size: tuple[int, int], expected: tuple[int, int], why: str = ""
    ) -> None:
        if size != expected:
            raise ValueError(
                f"Encoder {self.name!r} takes {expected[0]}x{expected[1]} images{why}, got "
                f"{size[0]}x{size[1]}"
            )

    def _require_multiple(self, size: tuple[int, int], step: tuple[int, int], what: str) -> None:
        if size[0] % step[0] or size[1] % step[1]:
            raise ValueError(
                f"Encoder {self.name!r} takes image sides that are multiples of its {what} "
                f"{step[0]}x{step[1]}, got {size[0]}x{size[1]}"
            )

    def num_tokens(self, image_size: Size | None = None) -> int:
        """How many tokens `forward` returns per image of `image_size`."""
        grid = self.grid_size(image_size)
        if grid is None:
            assert self.num_queries is not None, "a query encoder must declare num_queries"
            return self.num_queries
        return int(self.leading_token) + grid[0] * grid[1]

    @property
    def transform(self) -> ImageTransform:
        """PIL image -> the normalised pixel tensor `[3, H, W]` this encoder expects."""
        return ImageTransform(size=self.input_size, mean=self.mean, std=self.std)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the floating-point parameters (inputs are cast to it, tokens come in it)."""
        if self._dtype is None:
            floating = (p.dtype for p in self.parameters() if p.is_floating_point())
            self._dtype = next(floating, torch.get_default_dtype())
        return self._dtype

    def _apply(self, fn, recurse=True):  # .to(), .half(), .cuda() ... may change the dtype
        self._dtype = None
        return super()._apply(fn, recurse)

    @property
    def device(self) -> torch.device:
        for parameter in self.parameters():
            return parameter.device
        return torch.device("cpu")

    # -- freezing --------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> VisualEncoder:
        """Eval mode, no gradients; `train()` keeps a frozen encoder in eval mode."""
        self._frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> VisualEncoder:
        """Let the encoder train: parameters require gradients; train/eval mode as asked."""
        self._frozen = False
        return self.requires_grad_(True)

    def train(self, mode: bool = True) -> VisualEncoder:
        return super().train(mode and not self._frozen)

    # -- weights -------------------------------------------------------------------------------

    def load_weights(self, path: str | Path) -> LoadReport:
        """Load local weights (safetensors, or a pickle read with weights_only=True), strictly."""
        return load_weights(
            self.model,
            path,
            prefixes=self.checkpoint_prefixes,
            ignore=self.ignored_checkpoint_prefixes,
        )

    def save_weights(self, path: str | Path) -> Path:
        """Write the wrapped module's weights to a safetensors file."""
        return save_weights(self.model, path, metadata={"encoder": self.name})

    # -- forward ---------------------------------------------------------------------------------

    @abstractmethod
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens `[B, N, C]` for a validated pixel batch in the module's dtype."""

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        self._check_pixels(pixels)
        grid = self.grid_size(tuple(pixels.shape[-2:]))
        count = self.num_queries if grid is None else int(self.leading_token) + grid[0] * grid[1]
        dtype = self.dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            tokens = self._encode(pixels.to(dtype))
        if tokens.dtype != dtype:
            tokens = tokens.to(dtype)
        declared = (pixels.shape[0], count, self.embed_dim)
        if tuple(tokens.shape) != declared:
            raise RuntimeError(
                f"Encoder {self.name!r} produced tokens of shape {tuple(tokens.shape)}, but "
                f"declares {declared}; its adapter or configuration is inconsistent"
            )
        return EncoderOutput(tokens=tokens, grid=grid, leading_token=self.leading_token)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(
                f"Encoder {self.name!r} expects a pixel tensor, got {type(pixels).__name__}"
            )
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"Encoder {self.name!r} expects pixels of shape [B, 3, H, W], got "
                f"{tuple(pixels.shape)}; use encoder.transform to turn a PIL image into pixels"
            )
        if not pixels.is_floating_point():
            raise ValueError(
                f"Encoder {self.name!r} expects normalised floating-point pixels, got "
                f"{pixels.dtype}; use encoder.transform"
            )

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_size={self.input_size}, embed_dim={self.embed_dim}, "
            f"num_tokens={self.num_tokens()}, frozen={self._frozen}"
        )
