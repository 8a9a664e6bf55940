"""`slerp`: spherical linear interpolation between the base (t = 0) and one other model (t = 1),
each tensor taken as one flat vector (mergekit's form; slerp is not from a merging paper).

The angle comes from the normalised vectors; the raw vectors are interpolated with
`sin((1 - t) omega) / sin omega` and `sin(t omega) / sin omega`; nearly parallel (or
anti-parallel) vectors, `|cos| > 0.9995`, fall back to linear interpolation. In at least float32,
in blocks of 2**20 elements as mergekit 0.1.5 does (the norm is the norm of the blocks' norms,
the dot product the sum of the blocks' sums), which gives its results bit for bit; two reused
block buffers are all the float32 scratch memory, whatever the tensor's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import FlatContexts, MethodCall, TensorContext
from sphinx_mllm.llm.merging.methods.base import REQUIRED, MergeMethod, MethodParameter
from sphinx_mllm.llm.merging.methods.linear import accumulation_dtype

PARALLEL_THRESHOLD = 0.9995
NORM_EPSILON = 1e-8
BLOCK = 1 << 20


class Slerp(MergeMethod):
    name = "slerp"
    summary = "Spherical interpolation from the base (t = 0) to the other model (t = 1)"
    base_model = "required"
    min_models = max_models = 1
    blockwise = True  # the angle from the whole tensors first, then block by block
    parameters = (
        MethodParameter(
            "t",
            REQUIRED,
            help="interpolation factor, 0 = base",
            kind="number",
            minimum=0,
            maximum=1,
        ),
    )

    def merge(
        self,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        a, b = base.reshape(-1), tensors[0].reshape(-1)
        read = lambda start, stop: (a[start:stop], b[start:stop])  # noqa: E731
        scales = _scales(read, a.numel(), params["t"], accumulation_dtype(base.dtype))
        return _interpolate(scales, a, b).reshape(base.shape)

    def prepare(self, call: MethodCall, context: TensorContext, flat: FlatContexts) -> Any:
        def read(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            block = flat(start, stop)
            return call.base.evaluate(block), call.inputs[0].evaluate(block)

        _, params = self.resolved_parameters(call, context)
        dtype = accumulation_dtype(context.compute_dtype)  # what the inputs evaluate to
        return _scales(read, math.prod(context.shape), params["t"], dtype)

    def merge_block(
        self,
        state: Any,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        return _interpolate(state, base, tensors[0]).reshape(base.shape)


_Read = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def _scales(
    read: _Read, numel: int, t_value: float, dtype: torch.dtype
) -> tuple[float, float, torch.dtype]:
    """The factors of a and b for the whole flat tensors, which `read(start, stop)` gives block
    by block (twice: the norms, then the dot product of the normalised vectors), computed in the
    accumulation `dtype` (returned with them)."""
    t = torch.tensor(float(t_value), dtype=torch.float32).to(dtype)
    if numel == 0:
        return float(1 - t), float(t), dtype
    blocks = _Blocks(read, numel, dtype)
    norms = [(torch.linalg.vector_norm(x), torch.linalg.vector_norm(y)) for x, y in blocks]
    norm_a, norm_b = (_norm_of_norms(list(column)) for column in zip(*norms, strict=True))
    dots = [x.div_(norm_a).mul_(y.div_(norm_b)).sum() for x, y in blocks]
    dot = torch.stack(dots).sum().clamp(-1, 1)
    linear = dot.abs() > PARALLEL_THRESHOLD
    omega = torch.acos(torch.where(linear, 0, dot))
    sine = torch.sin(omega)
    scale_a = torch.where(linear, 1 - t, torch.sin((1 - t) * omega) / sine)
    scale_b = torch.where(linear, t, torch.sin(t * omega) / sine)
    return float(scale_a), float(scale_b), dtype


def _interpolate(
    scales: tuple[float, float, torch.dtype], a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """`scale_a * a + scale_b * b` in the accumulation dtype, rounded to a's dtype; flat."""
    scale_a, scale_b, dtype = scales
    a, b = a.reshape(-1), b.reshape(-1)
    result = torch.empty_like(a)
    blocks = _Blocks(lambda start, stop: (a[start:stop], b[start:stop]), a.numel(), dtype)
    for start, (x, y) in zip(blocks.starts, blocks, strict=True):
        result[start : start + BLOCK] = x.mul_(scale_a).add_(y.mul_(scale_b))
    return result


class _Blocks:
    """Blocks of BLOCK elements of the two flat inputs, each copied into one of two reused
    buffers in the accumulation dtype (valid until the next block: the caller may work in them
    in place)."""

    def __init__(self, read: _Read, numel: int, dtype: torch.dtype) -> None:
        self.read = read
        self.numel = numel
        self.starts = range(0, numel, BLOCK)
        size = min(numel, BLOCK)
        self.buffers = torch.empty(size, dtype=dtype), torch.empty(size, dtype=dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.buffers
        for start in self.starts:
            stop = min(start + BLOCK, self.numel)
            a, b = self.read(start, stop)
            yield x[: stop - start].copy_(a.reshape(-1)), y[: stop - start].copy_(b.reshape(-1))


def _norm_of_norms(norms: list[torch.Tensor]) -> torch.Tensor:
    norm = torch.linalg.vector_norm(torch.stack(norms))
    return torch.where(norm > NORM_EPSILON, norm, 1)


slerp = Slerp()
