"""Projectors: map visual features `[..., in_dim]` to the LLM width `[..., out_dim]`.

`linear_ln` is SPHINX's `visual_proj` (Linear then LayerNorm, llama_ens.py); `mlp2x_gelu` is
LLaVA-1.5's (Linear, GELU, Linear); `linear` is LLaVA-1's; `identity` passes features through
when the widths already agree. Each factory is registered under its own name.
"""

from __future__ import annotations

import torch
from torch import nn

from sphinx_mllm.mixer.registry import get_projector


class Projector(nn.Module):
    """A named stack of layers with a checked input width."""

    def __init__(self, name: str, in_dim: int, out_dim: int, layers: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.layers = layers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.in_dim:
            raise ValueError(
                f"Projector {self.name!r} expects features of width {self.in_dim} in the last "
                f"dimension, got a tensor of shape {tuple(features.shape)}"
            )
        return self.layers(features)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_dim={self.in_dim}, out_dim={self.out_dim}"


def _check_dims(name: str, in_dim: int, out_dim: int) -> None:
    for label, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Projector {name!r}: {label} must be a positive int, got {value!r}")


def linear(
    in_dim: int,
    out_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Projector:
    """One Linear layer (LLaVA-1)."""
    _check_dims("linear", in_dim, out_dim)
    return Projector(
        "linear", in_dim, out_dim, nn.Linear(in_dim, out_dim, device=device, dtype=dtype)
    )


def linear_ln(
    in_dim: int,
    out_dim: int,
    *,
    eps: float = 1e-5,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Projector:
    """Linear then LayerNorm (SPHINX's visual_proj and Q-Former projection)."""
    _check_dims("linear_ln", in_dim, out_dim)
    layers = nn.Sequential(
        nn.Linear(in_dim, out_dim, device=device, dtype=dtype),
        nn.LayerNorm(out_dim, eps=eps, device=device, dtype=dtype),
    )
    return Projector("linear_ln", in_dim, out_dim, layers)


def mlp2x_gelu(
    in_dim: int,
    out_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Projector:
    """Linear, GELU, Linear (LLaVA-1.5's mm_projector)."""
    _check_dims("mlp2x_gelu", in_dim, out_dim)
    layers = nn.Sequential(
        nn.Linear(in_dim, out_dim, device=device, dtype=dtype),
        nn.GELU(),
        nn.Linear(out_dim, out_dim, device=device, dtype=dtype),
    )
    return Projector("mlp2x_gelu", in_dim, out_dim, layers)


def identity(
    in_dim: int,
    out_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Projector:
    """No parameters: features pass through unchanged (widths must already agree)."""
    _check_dims("identity", in_dim, out_dim)
    if in_dim != out_dim:
        raise ValueError(
            f"Projector 'identity' cannot map width {in_dim} to {out_dim}; use 'linear' or "
            "'mlp2x_gelu' when the encoder and LLM widths differ"
        )
    return Projector("identity", in_dim, out_dim, nn.Identity())


def create_projector(name: str, in_dim: int, out_dim: int, **kwargs) -> Projector:
    """Build the projector registered as `name`, mapping width `in_dim` to `out_dim`."""
    return get_projector(name)(in_dim, out_dim, **kwargs)
