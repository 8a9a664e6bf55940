"""The plan of a merge: every tensor's fate (merged, copied from a named model, or skipped by a
rule), checked against every input before anything is written.

The reference model (the base, or else the first model) gives the output's tensor names,
shapes and, unless `out_dtype` is set, dtypes. Tensors matching `include` and no `exclude`
pattern (shell wildcards) are merged; the others are copied from `copy_from`, or skipped when
`copy_from` is None. Non-floating-point tensors (e.g. buffers of indices) are copied. Every
problem found (a tensor missing from a model, a shape that differs, a tensor only some models
have) is collected into one `MergePlanError` naming the tensor and the model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.llm.merging.expression import Expression, Model
from sphinx_mllm.llm.merging.parameters import layer_index
from sphinx_mllm.llm.merging.writer import OutputTensor

Fate = Literal["merge", "copy", "skip"]


class MergePlanError(ValueError):
    """The inputs do not fit the merge; the message lists every problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:50]
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{len(self.problems)} problem(s) with the merge inputs:\n  "
            + "\n  ".join(shown)
            + more
        )


@dataclass(frozen=True)
class TensorPlan:
    name: str
    fate: Fate
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    source: str | None = None  # the model a copied tensor comes from
    reason: str = ""


@dataclass
class MergePlan:
    tensors: list[TensorPlan]
    models: dict[str, ModelCheckpoint]  # label -> checkpoint, every model the merge reads
    reference: str
    num_layers: int | None
    notes: list[str] = field(default_factory=list)

    def count(self, fate: Fate) -> int:
        return sum(1 for tensor in self.tensors if tensor.fate == fate)

    @property
    def outputs(self) -> list[OutputTensor]:
        return [
            OutputTensor(t.name, t.out_dtype, t.shape) for t in self.tensors if t.fate != "skip"
        ]

    def peak_bytes(
        self,
        compute_dtype: torch.dtype,
        workers: int = 1,
        streamed: Callable[[TensorPlan], bool] | None = None,
        block_elements: int = 0,
    ) -> int:
        """An estimate of the merge's working memory: for the largest merged tensor (or block of
        one, for a tensor `streamed` says is computed in blocks of `block_elements`), one copy of
        it per input model in the compute dtype, two for the method's temporaries and one in the
        output dtype, times the tensors (or blocks) computed at once."""
        compute_bytes = torch.empty((), dtype=compute_dtype).element_size()
        largest = 0
        for tensor in self.tensors:
            if tensor.fate == "skip":
                continue
            count = 1
            for dim in tensor.shape:
                count *= dim
            if streamed is not None and streamed(tensor):
                count = min(count, block_elements)
            copies = (
                (len(self.models) + 2) * compute_bytes if tensor.fate == "merge" else compute_bytes
            )
            largest = max(
                largest, count * (copies + torch.empty((), dtype=tensor.out_dtype).element_size())
            )
        return largest * (workers + 1)


def unique_models(expression: Expression) -> list[Model]:
    """The distinct model leaves of an expression, by label (two paths, one label: an error)."""
    seen: dict[str, Model] = {}
    for model in expression.models():
        known = seen.setdefault(model.name, model)
        if known.path.resolve() != model.path.resolve():
            raise ValueError(
                f"Two different checkpoints are both named {model.name!r}: {known.path} and "
                f"{model.path}"
            )
    return list(seen.values())


def build_plan(
    expression: Expression,
    checkpoints: dict[str, ModelCheckpoint],
    *,
    reference: str,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    copy_from: str | None = None,
    out_dtype: torch.dtype | None = None,
) -> MergePlan:
    """Decide every tensor's fate and check every input (all problems at once).
    `copy_from`: the model excluded tensors are copied from (None: they are skipped)."""
    merged_models = [model.name for model in unique_models(expression)]
    ref = checkpoints[reference]
    layout = getattr(expression, "output_layout", None)
    if layout is not None:  # the expression names its own outputs (e.g. a layer stack)
        return _layout_plan(expression, layout(checkpoints), checkpoints, reference, out_dtype)
    problems: list[str] = expression.problems(ref)
    if copy_from is not None and copy_from not in checkpoints:
        problems.append(
            f"copy_from names {copy_from!r}, which is not one of the models {sorted(checkpoints)}"
        )
    num_layers = _num_layers(ref.names())
    parameter_problems: dict[str, list[str]] = {}  # problem -> the tensors it concerns
    plans = []
    for name in ref.names():
        selected = _matches(name, include) and not _matches(name, exclude)
        floating = ref.dtype(name).is_floating_point
        dtype = out_dtype if out_dtype is not None and floating else ref.dtype(name)
        if selected and floating:
            problems.extend(_check_tensor(name, ref, [checkpoints[m] for m in merged_models]))
            for problem in expression.parameter_problems(name, num_layers):
                parameter_problems.setdefault(problem, []).append(name)
            plans.append(TensorPlan(name, "merge", ref.shape(name), dtype))
        elif selected:
            reason = "not floating point"
            plans.append(
                TensorPlan(name, "copy", ref.shape(name), dtype, source=reference, reason=reason)
            )
        elif copy_from is None:
            plans.append(
                TensorPlan(name, "skip", ref.shape(name), dtype, reason="excluded, no copy_from")
            )
        else:
            if copy_from in checkpoints and name not in checkpoints[copy_from]:
                problems.append(f"tensor {name!r}: to be copied from {copy_from!r}, which lacks it")
            reason = "excluded from the merge"
            plans.append(
                TensorPlan(name, "copy", ref.shape(name), dtype, source=copy_from, reason=reason)
            )
    for label in merged_models:
        extra = [n for n in checkpoints[label].names() if n not in ref and not _matches(n, exclude)]
        problems.extend(
            f"tensor {n!r}: in {label!r} but not in the reference model {reference!r} (exclude it "
            "to drop it)"
            for n in extra
        )
    for problem, names in parameter_problems.items():
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        problems.append(f"{problem} (for tensor {names[0]!r}{more})")
    if all(plan.fate == "skip" for plan in plans):
        problems.append(
            f"nothing to write: every tensor of {reference!r} is excluded (include "
            f"{list(include)}, exclude {list(exclude)}) and copy_from is null"
        )
    if problems:
        raise MergePlanError(problems)
    notes = _dtype_notes(merged_models, checkpoints, [p.name for p in plans if p.fate == "merge"])
    notes += _unmatched_patterns(include, exclude, checkpoints)
    return MergePlan(plans, checkpoints, reference, num_layers, notes)


def _num_layers(names: Sequence[str]) -> int | None:
    indices = [index for index in map(layer_index, names) if index is not None]
    return (max(indices) + 1) if indices else None


def _unmatched_patterns(
    include: Sequence[str], exclude: Sequence[str], checkpoints: dict[str, ModelCheckpoint]
) -> list[str]:
    """A note for each include/exclude pattern that matches no tensor of any input (a typo
    would otherwise change nothing, silently)."""
    names = {name for checkpoint in checkpoints.values() for name in checkpoint.names()}
    return [
        f"{key} pattern {pattern!r} matches no tensor"
        for key, patterns in (("include", include), ("exclude", exclude))
        for pattern in patterns
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names)
    ]


def _layout_plan(
    expression: Expression,
    layout: list[tuple[str, tuple[int, ...], torch.dtype]],
    checkpoints: dict[str, ModelCheckpoint],
    reference: str,
    out_dtype: torch.dtype | None,
) -> MergePlan:
    plans = [
        TensorPlan(
            name,
            "merge",
            shape,
            out_dtype if out_dtype is not None and dtype.is_floating_point else dtype,
        )
        for name, shape, dtype in layout
    ]
    return MergePlan(plans, checkpoints, reference, _num_layers([name for name, _, _ in layout]))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _check_tensor(
    name: str, reference: ModelCheckpoint, models: list[ModelCheckpoint]
) -> list[str]:
    problems = []
    for model in models:
        if name not in model:
            problems.append(f"tensor {name!r}: missing in model {model.name!r}")
        elif model.shape(name) != reference.shape(name):
            problems.append(
                f"tensor {name!r}: shape {model.shape(name)} in {model.name!r}, "
                f"{reference.shape(name)} in {reference.name!r}"
            )
        elif not model.dtype(name).is_floating_point:
            problems.append(
                f"tensor {name!r}: {model.dtype(name)} in {model.name!r} cannot be merged"
            )
    return problems


def _dtype_notes(
    labels: list[str], checkpoints: dict[str, ModelCheckpoint], names: list[str]
) -> list[str]:
    seen = {
        label: {checkpoints[label].dtype(n) for n in names if n in checkpoints[label]}
        for label in labels
    }
    kinds = {dtype for dtypes in seen.values() for dtype in dtypes}
    if len(kinds) <= 1:
        return []
    listing = ", ".join(
        f"{label}: {sorted(str(d) for d in dtypes)}" for label, dtypes in seen.items()
    )
    return [f"inputs have different dtypes ({listing}); all are computed in the compute dtype"]
