"""`slerp`: spherical linear interpolation between the base (t = 0) and one other model (t = 1),
each tensor taken as one flat vector (mergekit's form; slerp is not from a merging paper).

The angle comes from the normalised vectors; the raw vectors are interpolated with
`sin((1 - t) omega) / sin omega` and `sin(t omega) / sin omega`; nearly parallel (or
anti-parallel) vectors, `|cos| > 0.9995`, fall back to linear interpolation. In at least float32,
in blocks of 2**20 elements as mergekit 0.1.5 does (the norm is the norm of the blocks' norms,
the dot product the sum of the blocks' sums), which gives its results bit for bit and bounds the
float32 scratch memory whatever the tensor's size.
"""

from __future__ import annotations

from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import TensorContext
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
    parameters = (MethodParameter("t", REQUIRED, help="interpolation factor, 0 = base"),)

    def merge(
        self,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        dtype = accumulation_dtype(base.dtype)
        a, b = base.reshape(1, -1), tensors[0].reshape(1, -1)  # mergekit's [outputs, elements]
        t = torch.tensor(float(params["t"]), dtype=torch.float32).reshape(-1, 1).to(dtype)
        if a.shape[1] == 0:
            return ((1 - t) * a + t * b).to(base.dtype).reshape(base.shape)
        starts = range(0, a.shape[1], BLOCK)

        def block(x: torch.Tensor, start: int) -> torch.Tensor:
            return x[:, start : start + BLOCK].to(dtype)

        norm_a = _norm_of_norms(
            [torch.linalg.vector_norm(block(a, s), dim=1, keepdim=True) for s in starts]
        )
        norm_b = _norm_of_norms(
            [torch.linalg.vector_norm(block(b, s), dim=1, keepdim=True) for s in starts]
        )
        dots = [
            ((block(a, s) / norm_a) * (block(b, s) / norm_b)).sum(dim=1, keepdim=True)
            for s in starts
        ]
        dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
        linear = dot.abs() > PARALLEL_THRESHOLD
        omega = torch.acos(torch.where(linear, 0, dot))
        sine = torch.sin(omega)
        scale_a = torch.where(linear, 1 - t, torch.sin((1 - t) * omega) / sine)
        scale_b = torch.where(linear, t, torch.sin(t * omega) / sine)
        result = torch.empty_like(a)
        for s in starts:
            result[:, s : s + BLOCK] = scale_a * block(a, s) + scale_b * block(b, s)
        return result.reshape(base.shape)


def _norm_of_norms(norms: list[torch.Tensor]) -> torch.Tensor:
    norm = torch.linalg.vector_norm(torch.stack(norms), dim=0)
    return torch.where(norm > NORM_EPSILON, norm, 1)


slerp = Slerp()
