"""Stacking the layers of several models into a deeper one (a "frankenmerge", mergekit's
passthrough over `slices`): output layers are the slices' half-open layer ranges in order,
renumbered from 0; tensors before the layers (embeddings) come from the first slice's model,
those after them (final norm, output head) from the last slice's. A slice's `scale` (possibly
per tensor, matched against the source tensor's name) multiplies its tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import Expression, Model, TensorContext
from sphinx_mllm.llm.merging.methods.passthrough import SCALE
from sphinx_mllm.llm.merging.parameters import layer_index, resolve

_LAYER = re.compile(r"((?:^|\.)layers\.)(\d+)(\.)")


@dataclass(frozen=True)
class LayerSlice:
    model: Model
    start: int
    end: int
    scale: Any = None


def _renumber(name: str, index: int) -> str:
    return _LAYER.sub(lambda match: f"{match[1]}{index}{match[3]}", name, count=1)


def _before_layers(name: str) -> bool:
    return "embed" in name


class LayerStack(Expression):
    """The output of stacked layer slices; defines its own output tensor names."""

    def __init__(self, slices: list[LayerSlice]) -> None:
        if not slices:
            raise ValueError("A layer stack needs at least one slice")
        for item in slices:
            if not isinstance(item.model, Model):
                raise TypeError(f"A layer slice takes a model, got {item.model!r}")
            bounds = (item.start, item.end)
            if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) or not (
                0 <= item.start < item.end
            ):
                raise ValueError(
                    f"Layer range [{item.start!r}, {item.end!r}) of {item.model.name!r}: expected "
                    "integers 0 <= start < end"
                )
            problem = SCALE.problem(item.scale)
            if problem is not None:
                raise ValueError(f"The scale of the slice of {item.model.name!r} is {problem}")
        self.slices = slices
        self._sources: dict[str, tuple[Model, str, Any]] = {}

    def __repr__(self) -> str:
        return (
            "layer_stack("
            + ", ".join(f"{s.model.name}[{s.start}:{s.end}]" for s in self.slices)
            + ")"
        )

    @property
    def num_layers(self) -> int:
        return sum(item.end - item.start for item in self.slices)

    def models(self) -> Iterator[Model]:
        for item in self.slices:
            yield item.model

    @property
    def elementwise(self) -> bool:
        return True

    def output_layout(
        self, checkpoints: dict[str, Any]
    ) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, shape, dtype) of every output tensor, in order; records where each comes from."""
        first, last = self.slices[0].model, self.slices[-1].model
        layout: list[tuple[str, tuple[int, ...], torch.dtype]] = []

        def add(name: str, model: Model, source: str, scale: Any) -> None:
            checkpoint = checkpoints[model.name]
            self._sources[name] = (model, source, scale)
            layout.append((name, checkpoint.shape(source), checkpoint.dtype(source)))

        for name in checkpoints[first.name].names():
            if layer_index(name) is None and _before_layers(name):
                add(name, first, name, self.slices[0].scale)
        offset = 0
        for item in self.slices:
            present = set()
            for name in checkpoints[item.model.name].names():
                index = layer_index(name)
                if index is not None and item.start <= index < item.end:
                    present.add(index)
                    add(_renumber(name, offset + index - item.start), item.model, name, item.scale)
            missing = sorted(set(range(item.start, item.end)) - present)
            if missing:
                raise ValueError(
                    f"{item.model.name!r} has no layers {missing} of its slice "
                    f"[{item.start}, {item.end})"
                )
            offset += item.end - item.start
        for name in checkpoints[last.name].names():
            if layer_index(name) is None and not _before_layers(name):
                add(name, last, name, self.slices[-1].scale)
        return layout

    def config_overrides(self) -> dict[str, Any]:
        return {"num_hidden_layers": self.num_layers}

    def evaluate(self, context: TensorContext) -> torch.Tensor:
        model, source, scale = self._sources[context.name]
        tensor = context.read(model, source)
        factor = resolve(scale, source, context.num_layers)
        return tensor if factor is None else tensor * factor


def layer_stack(slices: list[tuple[Model, int, int] | tuple[Model, int, int, Any]]) -> LayerStack:
    """`layer_stack([(a, 0, 24), (b, 8, 32)])`: a's layers 0-23 then b's 8-31."""
    return LayerStack([LayerSlice(*item) for item in slices])
