"""`slerp`: spherical linear interpolation between the base (t = 0) and one other model (t = 1),
each tensor taken as one flat vector (mergekit's form; slerp is not from a merging paper).

The angle comes from the normalised vectors; the raw vectors are interpolated with
`sin((1 - t) omega) / sin omega` and `sin(t omega) / sin omega`; nearly parallel (or
anti-parallel) vectors, `|cos| > 0.9995`, fall back to linear interpolation. In at least float32.
"""

from __future__ import annotations

from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import TensorContext
from sphinx_mllm.llm.merging.methods.base import REQUIRED, MergeMethod, MethodParameter
from sphinx_mllm.llm.merging.methods.linear import accumulation_dtype

PARALLEL_THRESHOLD = 0.9995
NORM_EPSILON = 1e-8


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
        a, b = base.reshape(-1).to(dtype), tensors[0].reshape(-1).to(dtype)
        t = torch.tensor(params["t"], dtype=dtype)
        norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
        norm_a = norm_a if norm_a > NORM_EPSILON else torch.tensor(1.0, dtype=dtype)
        norm_b = norm_b if norm_b > NORM_EPSILON else torch.tensor(1.0, dtype=dtype)
        cosine = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
        if cosine.abs() > PARALLEL_THRESHOLD:
            scale_a, scale_b = 1 - t, t
        else:
            omega = torch.acos(cosine)
            sine = torch.sin(omega)
            scale_a, scale_b = torch.sin((1 - t) * omega) / sine, torch.sin(t * omega) / sine
        return (scale_a * a + scale_b * b).to(base.dtype).reshape(base.shape)


slerp = Slerp()
