"""The task-arithmetic family, one engine configured six ways: `task_arithmetic`, `ties`,
`dare_linear`, `dare_ties`, `breadcrumbs`, `breadcrumbs_ties`.

Per tensor: task vectors `delta_i = theta_i - theta_base`; sparsified (none, magnitude, random,
magnitude outliers); weighted `D_i = w_i * delta_i`; with TIES sign consensus, the sign of
`sum D_i` is elected (ties go to +) and only agreeing entries are kept, `mixed = sum m_i D_i` and
the divisor is `sum m_i w_i` per entry; else `mixed = sum D_i`, divisor `sum w_i`. Then
`mixed / divisor` if `normalize`, times `lambda`, added to the base. Computed in the dtype the
tensors arrive in (fp32 by default; a mergekit config computes in its inputs' dtype, as
mergekit does). TIES as in the paper (arXiv 2306.01708: the sign of the unweighted trimmed task
vectors, an unweighted mean of the agreeing ones) is `sign_election="paper"`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from sphinx_mllm.llm.merging.expression import (
    Expression,
    FlatContexts,
    MethodCall,
    TensorContext,
)
from sphinx_mllm.llm.merging.methods import sparsify
from sphinx_mllm.llm.merging.methods.base import (
    REQUIRED,
    MergeMethod,
    MethodParameter,
    tensor_generator,
)
from sphinx_mllm.llm.merging.methods.rank_cut import RankCut, find_rank_cut, magnitude_keys

SPARSIFIERS = (None, "magnitude", "random", "magnitude_outliers")
SIGN_ELECTIONS = ("weighted", "paper")
PREPARE_BLOCK = 1 << 20  # elements of a task vector read at once to find the kept ranks


class GeneralizedTaskArithmetic(MergeMethod):
    """Task vectors, optionally sparsified and sign-elected, added to the base."""

    base_model = "required"
    min_models = 0

    def __init__(
        self,
        name: str,
        summary: str,
        *,
        sparsifier: str | None,
        consensus: bool,
        normalize: bool,
        rescale: bool,
    ) -> None:
        if sparsifier not in SPARSIFIERS:
            raise ValueError(f"Unknown sparsifier {sparsifier!r}; expected one of {SPARSIFIERS}")
        self.name = name
        self.summary = summary
        self.sparsifier = sparsifier
        self.consensus = consensus
        self.random = sparsifier == "random"  # draws masks: see MergeRecipe.shared_random_stream
        self.elementwise = sparsifier is None  # sparsifiers rank or draw over a whole tensor
        fraction = {"kind": "number", "minimum": 0, "maximum": 1}
        per_model = [
            MethodParameter(
                "weight",
                REQUIRED,
                per_model=True,
                help="scale of the model's task vector",
                kind="number",
            )
        ]
        if sparsifier is not None:
            per_model.append(
                MethodParameter(
                    "density", 1.0, per_model=True, help="fraction of entries kept", **fraction
                )
            )
        if sparsifier == "magnitude_outliers":
            per_model.append(
                MethodParameter(
                    "gamma",
                    0.01,
                    per_model=True,
                    help="fraction of largest entries dropped",
                    **fraction,
                )
            )
        ranked = sparsifier in ("magnitude", "magnitude_outliers")
        shared = [
            MethodParameter(
                "normalize", normalize, help="divide by the (agreeing) weights' sum", kind="bool"
            ),
            MethodParameter("lambda", 1.0, help="scale of the merged task vector", kind="number"),
        ]
        shared += [
            MethodParameter("rescale", rescale, help="rescale the kept entries", kind="bool"),
            MethodParameter(
                "rescale_by",
                "l1",
                help='"l1" (mergekit) or "inverse_density" (DARE paper)',
                kind="choice",
                choices=sparsify.RESCALINGS,
            ),
            MethodParameter(
                "int8_mask",
                False,
                help="mergekit's mask storage option; no numerical effect",
                kind="bool",
            ),
        ]
        if ranked:
            shared.append(
                MethodParameter(
                    "ranking",
                    "sort",
                    help='"sort" (mergekit, exact) or "select" (O(n))',
                    kind="choice",
                    choices=sparsify.RANKINGS,
                )
            )
        if consensus:
            shared.append(
                MethodParameter(
                    "sign_election",
                    "weighted",
                    help='"weighted" (mergekit) or "paper"',
                    kind="choice",
                    choices=SIGN_ELECTIONS,
                )
            )
        self.parameters = (*per_model, *shared)

    def value_problems(
        self, labels: list[str], model_params: list[dict[str, Any]], params: dict[str, Any]
    ) -> list[str]:
        """Breadcrumbs keeps `density` and drops the top `gamma`: together at most all entries;
        rescaling by `1 / density` needs a density above 0."""
        problems = []
        for label, settings in zip(labels, model_params, strict=True):
            density, gamma = settings.get("density", 1.0), settings.get("gamma", 0.0)
            if density + gamma > 1:
                problems.append(
                    f"model {label!r}: density {density:g} + gamma {gamma:g} exceed 1 (the kept "
                    "and the dropped largest entries cannot overlap)"
                )
            if params["rescale"] and params["rescale_by"] == "inverse_density" and density == 0:
                problems.append(
                    f"model {label!r}: density 0 with rescale_by inverse_density divides by 0"
                )
        return problems

    def merge(
        self,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        if not tensors:
            return base
        deltas = _deltas(base, tensors)
        if self.sparsifier is not None:
            for index, settings in enumerate(model_params):
                deltas[index] = self._sparsify(deltas[index], settings, params, context, index)
        return self._combine(base, deltas, model_params, params)

    def is_blockwise(self, call: MethodCall) -> bool:
        """Magnitude sparsifiers ranking by selection (and not rescaling, which needs the
        tensor's norms) work block by block; plain task arithmetic is elementwise."""
        if self.sparsifier is None:
            return True
        return (
            self.sparsifier in ("magnitude", "magnitude_outliers")
            and call.parameters.get("ranking") == "select"
            and call.parameters.get("rescale") is False
        )

    def prepare(self, call: MethodCall, context: TensorContext, flat: FlatContexts) -> Any:
        """Per model: the `RankCut` of the entries its sparsifier keeps (None: all of them),
        from the task vector read block by block."""
        model_params, _ = self.resolved_parameters(call, context)
        numel = math.prod(context.shape)
        width = torch.empty((), dtype=context.compute_dtype).element_size()
        cuts: list[RankCut | None] = []
        for model, settings in zip(call.inputs, model_params, strict=True):
            density = settings["density"]
            if density >= 1:
                cuts.append(None)
                continue
            if self.sparsifier == "magnitude":
                low, high = sparsify.magnitude_ranks(numel, density)
            else:
                low, high = sparsify.outlier_ranks(numel, density, settings["gamma"])

            def blocks(model: Expression = model) -> Iterator[torch.Tensor]:
                for start in range(0, numel, PREPARE_BLOCK):
                    block = flat(start, min(numel, start + PREPARE_BLOCK))
                    yield magnitude_keys(model.evaluate(block) - call.base.evaluate(block))

            cuts.append(find_rank_cut(blocks, numel, low, high, width))
        return cuts

    def merge_block(
        self,
        state: Any,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        if not tensors:
            return base
        deltas = _deltas(base, tensors)
        for index, cut in enumerate(state):
            if cut is not None:
                keys = magnitude_keys(deltas[index])
                mask = cut.mask(keys, context.offset).reshape(base.shape)
                deltas[index] = deltas[index] * mask.to(deltas.dtype)
        return self._combine(base, deltas, model_params, params)

    def _combine(
        self,
        base: torch.Tensor,
        deltas: torch.Tensor,
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> torch.Tensor:
        """Weigh the (sparsified) task vectors, elect signs, mix, normalise, add to the base."""
        weights = torch.tensor(
            [settings["weight"] for settings in model_params], dtype=deltas.dtype
        )
        weights = weights.reshape(-1, *([1] * base.dim()))
        if not self.consensus:
            deltas.mul_(weights)
            mixed, divisor = _plain_sum(deltas, weights)
        elif params["sign_election"] == "paper":  # elect on the unweighted vectors, then weigh
            agree = _agreeing(deltas)
            mixed, divisor = _agreeing_mean(deltas.mul_(weights), weights, agree)
        else:  # mergekit: weigh first, elect on the weighted vectors
            deltas.mul_(weights)
            mixed, divisor = _agreeing_mean(deltas, weights, _agreeing(deltas))
        if params["normalize"]:
            mixed = mixed / divisor
        if params["lambda"] != 1:
            mixed = mixed * params["lambda"]
        return (base + mixed).to(base.dtype)

    def _sparsify(
        self, delta: torch.Tensor, settings: dict, params: dict, context: TensorContext, index: int
    ) -> torch.Tensor:
        density = settings.get("density", 1.0)
        if self.sparsifier == "magnitude":
            kept = sparsify.magnitude(delta, density, params["ranking"])
        elif self.sparsifier == "magnitude_outliers":
            kept = sparsify.magnitude_outliers(delta, density, settings["gamma"], params["ranking"])
        else:  # "random"
            generator = context.generator or tensor_generator(context, f"dare/{index}")
            kept = sparsify.random_drop(delta, density, generator)
        if params["rescale"]:
            return sparsify.rescale(delta, kept, density, params["rescale_by"])
        return kept.to(delta.dtype)


def _deltas(base: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The task vectors `tensor - base`, stacked (in the compute dtype)."""
    deltas = base.new_empty((len(tensors), *base.shape))
    for index, tensor in enumerate(tensors):
        torch.sub(tensor, base, out=deltas[index])
    return deltas


def sum_over_models(values: torch.Tensor) -> torch.Tensor:
    """`values.sum(0)`, the same numbers several times faster for 16-bit values: for those,
    torch's reduction over the first dimension accumulates model by model in float32 and rounds
    once, which is done here without its slow strided kernel (for two models, one 16-bit add
    computes exactly that: the float32 sum, rounded once)."""
    if values.element_size() != 2:
        return values.sum(0)
    if len(values) == 2:
        return values[0] + values[1]
    total = values[0].to(torch.float32, copy=True)
    for value in values[1:]:
        total.add_(value)
    return total.to(values.dtype)


def _agreeing(deltas: torch.Tensor) -> torch.Tensor:
    """Entries whose sign is the elected one: the sign of the sum (a tie elects +)."""
    majority = (sum_over_models(deltas) >= 0).to(deltas.dtype) * 2 - 1
    return deltas.sign() == majority


def _agreeing_mean(
    weighted: torch.Tensor, weights: torch.Tensor, agree: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the agreeing weighted entries and the sum of their weights (0 -> 1)."""
    mixed = sum_over_models(weighted * agree)
    divisor = sum_over_models(weights * agree)
    divisor[divisor == 0] = 1
    return mixed, divisor


def _plain_sum(deltas: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    divisor = weights.sum(0)
    divisor[divisor.abs() < 1e-8] = 1
    return sum_over_models(deltas), divisor


task_arithmetic = GeneralizedTaskArithmetic(
    "task_arithmetic", "base + lambda * sum(weight_i * (model_i - base))",
    sparsifier=None, consensus=False, normalize=False, rescale=False,
)  # fmt: skip
ties = GeneralizedTaskArithmetic(
    "ties", "TIES: trim task vectors by magnitude, elect signs, mean of agreeing entries",
    sparsifier="magnitude", consensus=True, normalize=True, rescale=False,
)  # fmt: skip
dare_linear = GeneralizedTaskArithmetic(
    "dare_linear", "DARE: drop task-vector entries at random, rescale, add",
    sparsifier="random", consensus=False, normalize=False, rescale=True,
)  # fmt: skip
dare_ties = GeneralizedTaskArithmetic(
    "dare_ties", "DARE drop and rescale, then TIES sign election",
    sparsifier="random", consensus=True, normalize=False, rescale=True,
)  # fmt: skip
breadcrumbs = GeneralizedTaskArithmetic(
    "breadcrumbs", "Model Breadcrumbs: drop the smallest and the largest task-vector entries, add",
    sparsifier="magnitude_outliers", consensus=False, normalize=False, rescale=False,
)  # fmt: skip
breadcrumbs_ties = GeneralizedTaskArithmetic(
    "breadcrumbs_ties", "Model Breadcrumbs sparsification, then TIES sign election",
    sparsifier="magnitude_outliers", consensus=True, normalize=False, rescale=False,
)  # fmt: skip
