"""Merge parameters that differ per tensor: by name (filters) and over depth (gradients).

- `Gradient([0.0, 0.5, 1.0])`: anchors spread evenly over the layers, linearly interpolated at
  each layer's position (mergekit's gradient lists; tensors outside the layers take the first).
- `Filtered([("self_attn", 0.3), ("mlp", 0.7)], default=0.5)`: the value of the first filter
  that is a substring of the tensor name (mergekit's `filter:` entries), else the default. A
  filtered value may itself be a gradient.

A plain number (or bool, or string) is the same for every tensor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NO_DEFAULT = object()  # a filtered parameter without a fallback: no match is an error
LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    """The transformer block a tensor belongs to (`model.layers.12.mlp...` -> 12), or None."""
    match = LAYER_PATTERN.search(tensor_name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Gradient:
    """Values at evenly spaced anchors over the depth of the model."""

    anchors: tuple[float, ...]

    def __init__(self, anchors: Sequence[float]) -> None:
        values = tuple(float(value) for value in anchors)
        if not values:
            raise ValueError("A gradient needs at least one value")
        object.__setattr__(self, "anchors", values)

    def at(self, tensor_name: str, num_layers: int | None) -> float:
        """The value for a tensor (mergekit's rule): a layer at index i of L sits at
        t = i / (L - 1) (t = 1 when L = 1); tensors outside the layers (embeddings, final norm,
        output head) at t = 0; the anchors are interpolated linearly at t * (n - 1)."""
        index = layer_index(tensor_name)
        if index is None:
            position = 0.0
        elif num_layers is None or num_layers <= 1:
            position = 1.0
        else:
            position = index / (num_layers - 1)
        scaled = position * (len(self.anchors) - 1)
        lower = int(scaled)
        upper = min(len(self.anchors) - 1, lower + 1)
        fraction = scaled - lower
        return (1 - fraction) * self.anchors[lower] + fraction * self.anchors[upper]


@dataclass(frozen=True)
class Filtered:
    """Values chosen by substrings of the tensor name, first match first."""

    rules: tuple[tuple[str, Any], ...]
    default: Any = NO_DEFAULT

    def __init__(self, rules: Sequence[tuple[str, Any]], default: Any = NO_DEFAULT) -> None:
        object.__setattr__(self, "rules", tuple((str(pattern), value) for pattern, value in rules))
        object.__setattr__(self, "default", default)

    def select(self, tensor_name: str) -> Any:
        for pattern, value in self.rules:
            if pattern in tensor_name:
                return value
        if self.default is NO_DEFAULT:
            patterns = [pattern for pattern, _ in self.rules]
            raise ValueError(
                f"No filter of {patterns} matches {tensor_name!r} and there is no default"
            )
        return self.default


def resolve(value: Any, tensor_name: str, num_layers: int | None) -> Any:
    """The value of a (possibly per-tensor) parameter for one tensor."""
    if isinstance(value, Filtered):
        return resolve(value.select(tensor_name), tensor_name, num_layers)
    if isinstance(value, Gradient):
        return value.at(tensor_name, num_layers)
    return value
