"""`passthrough`: one model's tensors, unchanged or times a per-tensor `scale` (in the tensor's
dtype, as mergekit does). Stacking layers of several models is `layer_stack` (stacking.py)."""

from __future__ import annotations

from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import TensorContext
from sphinx_mllm.llm.merging.methods.base import MergeMethod, MethodParameter

SCALE = MethodParameter(
    "scale", None, per_model=True, help="factor for the tensor", kind="number", optional=True
)


class Passthrough(MergeMethod):
    name = "passthrough"
    summary = "One model's tensors, optionally scaled"
    base_model = "none"
    min_models = max_models = 1
    elementwise = True
    parameters = (SCALE,)

    def merge(
        self,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        scale = model_params[0]["scale"]
        return tensors[0] if scale is None else tensors[0] * scale


passthrough = Passthrough()
