"""`linear`: the weighted average (SPHINX's `beta * real + (1 - beta) * syn`).

`sum_i w_i * theta_i`, divided by `sum_i w_i` when `normalize` (the default), accumulated in at
least float32 (float64 inputs stay float64) in model order, as mergekit does; the base model, if
any, is an ordinary input.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import TensorContext
from sphinx_mllm.llm.merging.methods.base import REQUIRED, MergeMethod, MethodParameter


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class Linear(MergeMethod):
    name = "linear"
    summary = "Weighted average of the models (normalize: divide by the sum of the weights)"
    base_model = "none"
    elementwise = True
    parameters = (
        MethodParameter(
            "weight", REQUIRED, per_model=True, help="the model's weight", kind="number"
        ),
        MethodParameter("normalize", True, help="divide by the sum of the weights", kind="bool"),
    )

    def value_problems(
        self, labels: list[str], model_params: list[dict[str, Any]], params: dict[str, Any]
    ) -> list[str]:
        weights = [settings["weight"] for settings in model_params]
        if params["normalize"] and math.fsum(weights) == 0:
            return [
                f"the weights {weights} of models {labels} sum to 0, and normalize divides by "
                "their sum; give weights with a non-zero sum or set normalize: false"
            ]
        return []

    def merge(
        self,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        dtype = accumulation_dtype(tensors[0].dtype)
        weights = torch.tensor([settings["weight"] for settings in model_params], dtype=dtype)
        total = torch.zeros_like(tensors[0], dtype=dtype)
        for tensor, weight in zip(tensors, weights, strict=True):
            total.addcmul_(tensor.to(dtype), weight)
        if params["normalize"]:
            total.div_(weights.sum())
        return total.to(tensors[0].dtype)


linear = Linear()
