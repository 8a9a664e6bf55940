"""Running a merge: open the inputs, plan and check, then compute tensor by tensor and stream them
into the output, with a progress bar; or, for a dry run, report the plan.

Tensors are computed by a pool of `threads` workers, a few ahead of the writer, and written in
plan order; each tensor's randomness is seeded from its name, so the output is the same for any
number of threads.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.llm.merging.expression import Expression, Model, TensorContext
from sphinx_mllm.llm.merging.plan import MergePlan, TensorPlan, build_plan, unique_models
from sphinx_mllm.llm.merging.writer import (
    AtomicOutputDirectory,
    StreamingShardWriter,
    copy_model_files,
    plan_shards,
    shard_names,
    write_index,
)

DEFAULT_SHARD_BYTES = 5 * 1024**3
COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass
class MergeRecipe:
    """What to merge: an expression and the rules for the tensors around it."""

    expression: Expression
    reference: Model | None = None  # tensor names, shapes and files; default: the first model
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] = ()
    copy_from: Model | str | None = "reference"  # a model, None (skip), or the reference
    # float32 or float64; None computes in the inputs' (promoted) dtype, as mergekit does
    compute_dtype: torch.dtype | None = torch.float32
    load_dtype: torch.dtype | None = None  # inputs cast to this when read (mergekit's `dtype:`)
    out_dtype: torch.dtype | None = None
    seed: int = 0
    description: dict[str, Any] = field(default_factory=dict)  # provenance, as configured

    def reference_model(self) -> Model:
        return self.reference if self.reference is not None else unique_models(self.expression)[0]


@dataclass
class MergeReport:
    plan: MergePlan
    output: Path | None
    seconds: float
    shards: int

    def summary(self) -> str:
        plan = self.plan
        lines = [
            f"{len(plan.tensors)} tensors: {plan.count('merge')} merged, "
            f"{plan.count('copy')} copied, {plan.count('skip')} skipped by rule"
        ]
        lines += [f"note: {note}" for note in plan.notes]
        if self.output is not None:
            lines.append(f"wrote {self.shards} shard(s) to {self.output} in {self.seconds:.1f} s")
        return "\n".join(lines)


def open_models(recipe: MergeRecipe, allow_pickle: bool = False) -> dict[str, ModelCheckpoint]:
    models = unique_models(recipe.expression)
    extra = [m for m in (recipe.reference, recipe.copy_from) if isinstance(m, Model)]
    for model in extra:
        if model.name not in {m.name for m in models}:
            models.append(model)
    return {
        model.name: ModelCheckpoint(model.path, name=model.name, allow_pickle=allow_pickle)
        for model in models
    }


def make_plan(recipe: MergeRecipe, checkpoints: dict[str, ModelCheckpoint]) -> MergePlan:
    if recipe.compute_dtype is not None and recipe.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"The compute dtype must be float32, float64 or None, got {recipe.compute_dtype}"
        )
    reference = recipe.reference_model().name
    copy_from = reference if recipe.copy_from == "reference" else recipe.copy_from
    return build_plan(
        recipe.expression,
        checkpoints,
        reference=reference,
        include=recipe.include,
        exclude=recipe.exclude,
        copy_from=copy_from.name if isinstance(copy_from, Model) else copy_from,
        out_dtype=recipe.out_dtype,
    )


def describe_plan(plan: MergePlan, recipe: MergeRecipe, threads: int) -> str:
    """The dry-run report: every tensor's fate, the inputs and a memory estimate."""
    lines = [f"reference model: {plan.reference}; layers: {plan.num_layers}"]
    lines += [
        f"input {label}: {cp.path} ({len(cp.names())} tensors, {len(cp.files)} file(s))"
        for label, cp in plan.models.items()
    ]
    lines.append(f"expression: {recipe.expression!r}")
    for tensor in plan.tensors:
        detail = f" from {tensor.source}" if tensor.source else ""
        reason = f" ({tensor.reason})" if tensor.reason else ""
        lines.append(
            f"  {tensor.fate:<5} {tensor.name} {list(tensor.shape)} -> "
            f"{str(tensor.out_dtype).removeprefix('torch.')}{detail}{reason}"
        )
    lines.append(
        "estimated peak working memory: "
        f"{plan.peak_bytes(recipe.compute_dtype, threads) / 1024**2:.1f} MiB"
    )
    return "\n".join(lines)


def run_merge(
    recipe: MergeRecipe,
    output: str | Path,
    *,
    shard_size: int = DEFAULT_SHARD_BYTES,
    threads: int = 1,
    force: bool = False,
    allow_pickle: bool = False,
    progress: Callable[[int], Any] | None = None,
    on_plan: Callable[[MergePlan], Any] | None = None,
) -> MergeReport:
    """Merge into `output` (written aside, renamed into place when complete). `progress(n)` is
    called as tensors are written; `on_plan(plan)` once the plan is checked."""
    started = time.perf_counter()
    checkpoints = open_models(recipe, allow_pickle)
    try:
        plan = make_plan(recipe, checkpoints)
        if on_plan is not None:
            on_plan(plan)
        shards = plan_shards(plan.outputs, shard_size)
        directory = AtomicOutputDirectory(output, force=force)
        try:
            _write(plan, recipe, shards, directory.path, threads, progress)
            overrides = getattr(recipe.expression, "config_overrides", dict)()
            out_dtype = recipe.out_dtype or recipe.load_dtype
            copy_model_files(
                checkpoints[plan.reference].directory, directory.path, out_dtype, overrides
            )
            target = directory.commit()
        except BaseException:
            directory.abort()
            raise
    finally:
        for checkpoint in checkpoints.values():
            checkpoint.close()
    return MergeReport(plan, target, time.perf_counter() - started, len(shards))


def _write(
    plan: MergePlan,
    recipe: MergeRecipe,
    shards: list,
    directory: Path,
    threads: int,
    progress: Callable[[int], Any] | None,
) -> None:
    names = shard_names(len(shards))
    by_name = {tensor.name: tensor for tensor in plan.tensors}
    metadata = _provenance(plan, recipe)
    ordered = [by_name[output.name] for shard in shards for output in shard]
    writers = iter(
        StreamingShardWriter(directory / name, shard, metadata)
        for shard, name in zip(shards, names, strict=True)
    )
    writer = next(writers)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque[tuple[TensorPlan, Future]] = deque()
        upcoming = iter(ordered)
        for tensor in upcoming:
            pending.append((tensor, pool.submit(_compute, plan, recipe, tensor)))
            if len(pending) > threads:
                break
        while pending:
            tensor, future = pending.popleft()
            if writer.done:
                writer = next(writers)
            writer.write(tensor.name, future.result())
            if progress is not None:
                progress(1)
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, pool.submit(_compute, plan, recipe, following)))
    write_index(directory, shards, names)


def _compute(plan: MergePlan, recipe: MergeRecipe, tensor: TensorPlan) -> torch.Tensor:
    if tensor.fate == "copy":
        return plan.models[tensor.source].get(tensor.name).to(tensor.out_dtype)
    compute = recipe.compute_dtype or _promoted_dtype(plan, recipe, tensor.name)

    def read(model: Model, name: str | None = None) -> torch.Tensor:
        value = plan.models[model.name].get(name or tensor.name)
        if recipe.load_dtype is not None:
            value = value.to(recipe.load_dtype)
        return value.to(compute)

    context = TensorContext(
        name=tensor.name,
        read=read,
        compute_dtype=compute,
        seed=recipe.seed,
        num_layers=plan.num_layers,
        shape=tensor.shape,
    )
    value = recipe.expression.evaluate(context)
    if tuple(value.shape) != tensor.shape:
        raise RuntimeError(
            f"The merge gave {tensor.name!r} the shape {tuple(value.shape)}, expected "
            f"{tensor.shape}"
        )
    return value.to(tensor.out_dtype)


def _promoted_dtype(plan: MergePlan, recipe: MergeRecipe, name: str) -> torch.dtype:
    """The dtype mergekit computes a tensor in: its inputs' dtypes (after `load_dtype`) promoted."""
    if recipe.load_dtype is not None:
        return recipe.load_dtype
    dtypes = [checkpoint.dtype(name) for checkpoint in plan.models.values() if name in checkpoint]
    promoted = dtypes[0] if dtypes else torch.float32
    for dtype in dtypes[1:]:
        promoted = torch.promote_types(promoted, dtype)
    return promoted


def _provenance(plan: MergePlan, recipe: MergeRecipe) -> dict[str, str]:
    inputs = {
        label: {"path": str(cp.path), "fingerprint": cp.fingerprint()}
        for label, cp in plan.models.items()
    }
    return {
        "format": "pt",
        "sphinx_merge_recipe": json.dumps(
            recipe.description or {"expression": repr(recipe.expression)}
        ),
        "sphinx_merge_inputs": json.dumps(inputs),
    }
