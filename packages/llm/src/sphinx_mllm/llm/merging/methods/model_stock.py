"""`model_stock` (Model Stock, arXiv 2403.19522): interpolate the average of the fine-tuned models
towards the base by the factor the angle between them gives,
`t = N cos / (1 + (N - 1) cos)`, `result = t * mean(theta_i) + (1 - t) * theta_base`.

As mergekit: per tensor (or per row with `filter_wise`), `cos` the mean of the pairwise cosines
of the task vectors, `t` = 0 when the denominator vanishes, not clamped.
"""

from __future__ import annotations

from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import TensorContext
from sphinx_mllm.llm.merging.methods.base import MergeMethod, MethodParameter


class ModelStock(MergeMethod):
    name = "model_stock"
    summary = "Model Stock: the fine-tuned average pulled towards the base by their angle"
    base_model = "required"
    min_models = 2
    parameters = (
        MethodParameter(
            "filter_wise", False, help="one factor per row instead of per tensor", kind="bool"
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
        shape = base.shape
        if not params["filter_wise"]:
            shape_of_rows = (-1,)
        elif base.dim() == 1:
            shape_of_rows = (1, -1)
        else:
            shape_of_rows = tuple(base.shape)

        def rows(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.reshape(shape_of_rows)

        origin, models = rows(base), [rows(tensor) for tensor in tensors]
        deltas = [model - origin for model in models]
        cosines = []
        for i in range(len(deltas)):
            for j in range(i + 1, len(deltas)):
                norms = torch.norm(deltas[i], dim=-1) * torch.norm(deltas[j], dim=-1)
                cosines.append(
                    ((deltas[i] * deltas[j]).sum(-1) / norms.clamp(min=1e-6)).clamp(-1, 1)
                )
        cosine = torch.stack(cosines).mean(0).unsqueeze(-1)
        count = len(models)
        denominator = 1 + (count - 1) * cosine
        degenerate = denominator.abs() < 1e-6
        t = torch.where(
            degenerate,
            torch.zeros_like(cosine),
            count * cosine / torch.where(degenerate, torch.ones_like(denominator), denominator),
        )
        average = sum(models) / count
        return (t * average + (1 - t) * origin).reshape(shape)


model_stock = ModelStock()
