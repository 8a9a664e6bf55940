"""Running a merge: lock the output, open the inputs, plan and check, then compute tensor by
tensor and stream them into the output, with a progress bar; or, for a dry run, report the plan.

The output is an `AtomicOutputDirectory` of the writer `sphinx-merge`, taken before anything is
read and held to the end: another run into the same output fails at once, and `force` replaces
only an earlier output of `sphinx-merge` that holds none of the inputs. Every output block is
checked for NaN and infinite values (`finite`) before it is written.

Tensors are computed by a pool of `threads` workers, a few ahead of the writer, and written in
plan order; each tensor's randomness is seeded from its name, or drawn from one stream in a
fixed order (`shared_random_stream`), so the output is the same for any number of threads.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from sphinx_mllm.core.outputs import AtomicOutputDirectory
from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.llm.merging.expression import Expression, Model, TensorContext
from sphinx_mllm.llm.merging.finite import NonFiniteError, all_finite
from sphinx_mllm.llm.merging.plan import MergePlan, TensorPlan, build_plan, unique_models
from sphinx_mllm.llm.merging.random_stream import OrderedRandomStream
from sphinx_mllm.llm.merging.writer import (
    StreamingShardWriter,
    check_model_files,
    copy_model_files,
    plan_shards,
    shard_names,
    write_index,
)

DEFAULT_SHARD_BYTES = 5 * 1024**3
BLOCK_ELEMENTS = 1 << 20  # elementwise merges work through tensors in blocks of this size
STREAM_ELEMENTS = 1 << 20  # blockwise merges stream tensors larger than this
IN_FLIGHT_ELEMENTS = 1 << 27  # elements of whole tensors and their inputs at once (_write)
COMPUTE_DTYPES = (torch.float32, torch.float64)
WRITER = "sphinx-merge"  # the marker an earlier output must carry to be replaced by --force


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
    # Random masks (DARE) from one stream, tensor by tensor in lexicographic order of name, as
    # mergekit draws them (see random_stream); else each tensor seeded from its name
    shared_random_stream: bool = False
    description: dict[str, Any] = field(default_factory=dict)  # provenance, as configured
    config_file: Path | None = None  # the config it was read from: an input, never replaced

    def __post_init__(self) -> None:
        self.include = _patterns(self.include, "include")
        self.exclude = _patterns(self.exclude, "exclude")

    def reference_model(self) -> Model:
        return self.reference if self.reference is not None else unique_models(self.expression)[0]

    def input_paths(self) -> list[Path]:
        """Every file and directory the merge reads: models, adapters and the config file."""
        paths = list(self.expression.input_paths())
        paths += [
            model.path for model in (self.reference, self.copy_from) if isinstance(model, Model)
        ]
        return paths + ([self.config_file] if self.config_file is not None else [])


def _patterns(value: str | Sequence[str], key: str) -> tuple[str, ...]:
    """Shell wildcards: one string is one pattern (not a sequence of one-letter patterns)."""
    patterns = (value,) if isinstance(value, str) else tuple(value)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{key}: patterns are strings, got {pattern!r}")
    return patterns


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
    checkpoints: dict[str, ModelCheckpoint] = {}
    try:
        for model in models:
            checkpoints[model.name] = ModelCheckpoint(
                model.path, name=model.name, allow_pickle=allow_pickle
            )
    except BaseException:
        for checkpoint in checkpoints.values():
            checkpoint.close()
        raise
    return checkpoints


def check_reference_files(recipe: MergeRecipe) -> None:
    """Refuse a broken `config.json` (or other JSON config) of the reference model, which the
    output would copy, before any work."""
    reference = recipe.reference_model().path
    check_model_files(reference if reference.is_dir() else reference.parent)


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
            f"{_dtype_name(tensor.out_dtype)}{detail}{reason}"
        )
    lines += [f"note: {note}" for note in plan.notes]
    compute = recipe.compute_dtype or torch.float32
    peak = plan.peak_bytes(compute, threads, _streaming_rule(recipe), BLOCK_ELEMENTS)
    lines.append(f"estimated peak working memory: {peak / 1024**2:.1f} MiB")
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
    """Merge into `output` (written aside, renamed into place when complete; locked from the
    start, see the module docstring). `progress(n)` is called as tensors are written;
    `on_plan(plan)` once the plan is checked."""
    started = time.perf_counter()
    if shard_size < 1:
        raise ValueError(f"The shard size must be at least 1 byte, got {shard_size}")
    directory = AtomicOutputDirectory(
        output, writer=WRITER, force=force, inputs=recipe.input_paths()
    )
    try:
        check_reference_files(recipe)
        checkpoints = open_models(recipe, allow_pickle)
        try:
            plan = make_plan(recipe, checkpoints)
            if on_plan is not None:
                on_plan(plan)
            outputs = plan.outputs
            if recipe.shared_random_stream:  # computed, so written, in the stream's order
                outputs = sorted(outputs, key=lambda output: output.name)
            shards = plan_shards(outputs, shard_size)
            _write(plan, recipe, shards, directory.path, threads, progress)
            overrides = getattr(recipe.expression, "config_overrides", dict)()
            out_dtype = recipe.out_dtype or recipe.load_dtype
            copy_model_files(
                checkpoints[plan.reference].directory, directory.path, out_dtype, overrides
            )
        finally:
            for checkpoint in checkpoints.values():
                checkpoint.close()
    except BaseException:
        directory.abort()
        raise
    target = directory.commit()
    return MergeReport(plan, target, time.perf_counter() - started, len(shards))


def _write(
    plan: MergePlan,
    recipe: MergeRecipe,
    shards: list,
    directory: Path,
    threads: int,
    progress: Callable[[int], Any] | None,
) -> None:
    """Tensors a block of rows at a time when the expression allows it (in this thread, torch
    parallelising each operation); the others computed by a pool of workers ahead of the
    writer. Either way they are written in plan order."""
    names = shard_names(len(shards))
    by_name = {tensor.name: tensor for tensor in plan.tensors}
    metadata = _provenance(plan, recipe)
    ordered = [by_name[output.name] for shard in shards for output in shard]
    writers = iter(
        StreamingShardWriter(directory / name, shard, metadata)
        for shard, name in zip(shards, names, strict=True)
    )
    writer = next(writers)
    elementwise = recipe.expression.elementwise
    streamed = _streaming_rule(recipe)
    # Whole tensors in flight at once, each counted with a copy per input model, hold at most
    # this many elements (but always one): the largest tensors (embeddings) are then computed
    # alone, the small ones several at a time.
    copies = len(unique_models(recipe.expression)) + 1

    def weight(tensor: TensorPlan) -> int:
        return math.prod(tensor.shape) * copies

    budget = max(IN_FLIGHT_ELEMENTS, *(weight(t) for t in ordered)) if ordered else 0
    stream = None
    if recipe.shared_random_stream:
        merged = [tensor.name for tensor in ordered if tensor.fate == "merge"]
        stream = OrderedRandomStream(recipe.seed, merged)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        try:
            # (tensor, its whole value or None, the statistics of a streamed blockwise merge)
            pending: deque[tuple[TensorPlan, Future | None, Future | None]] = deque()
            upcoming = deque(ordered)
            in_flight = 0

            def fill() -> None:
                nonlocal in_flight
                while upcoming and len(pending) <= threads:
                    tensor = upcoming[0]
                    whole = not streamed(tensor)
                    if whole and pending and in_flight + weight(tensor) > budget:
                        return
                    upcoming.popleft()
                    if whole:
                        in_flight += weight(tensor)
                        future = pool.submit(_compute, plan, recipe, tensor, None, None, stream)
                        pending.append((tensor, future, None))
                    elif tensor.fate == "merge" and not elementwise:
                        pending.append((tensor, None, pool.submit(_prepare, plan, recipe, tensor)))
                    else:
                        pending.append((tensor, None, None))

            fill()
            while pending:
                tensor, future, statistics = pending.popleft()
                if writer.done:
                    writer = next(writers)
                if future is None:
                    prepared = statistics.result() if statistics is not None else {}
                    parts = _row_blocks(plan, recipe, tensor, pool, threads + 1, prepared)
                else:
                    parts = [future.result()]
                    in_flight -= weight(tensor)
                writer.write(tensor.name, parts)
                if progress is not None:
                    progress(1)
                fill()
        except BaseException:
            if stream is not None:
                stream.cancel()  # workers waiting for their turn stop instead of waiting forever
            raise
    write_index(directory, shards, names)


def _streaming_rule(recipe: MergeRecipe) -> Callable[[TensorPlan], bool]:
    """Whether a tensor is computed in row blocks: copies and elementwise merges always;
    blockwise ones (which read their inputs again for their statistics) when large."""
    elementwise, blockwise = recipe.expression.elementwise, recipe.expression.blockwise

    def streamed(tensor: TensorPlan) -> bool:
        if tensor.fate == "copy":
            return True
        if recipe.shared_random_stream:  # whole tensors, each taking its turn in the stream
            return False
        if elementwise:
            return True
        return blockwise and math.prod(tensor.shape) > STREAM_ELEMENTS

    return streamed


def _row_blocks(
    plan: MergePlan,
    recipe: MergeRecipe,
    tensor: TensorPlan,
    pool: ThreadPoolExecutor,
    ahead: int,
    prepared: dict[int, Any],
) -> Iterator[torch.Tensor]:
    """The tensor in consecutive blocks of about BLOCK_ELEMENTS elements, computed by the pool
    `ahead` blocks in front of the caller (who writes them meanwhile); `prepared` holds the
    statistics of its blockwise method calls (see `_prepare`)."""
    shape = tensor.shape
    row = math.prod(shape[1:])
    if not shape or shape[0] * row <= BLOCK_ELEMENTS:
        yield _compute(plan, recipe, tensor, None)
        return
    step = max(1, BLOCK_ELEMENTS // max(1, row))
    ranges = iter([(start, min(shape[0], start + step)) for start in range(0, shape[0], step)])

    def submit(rows: tuple[int, int]) -> Future:
        return pool.submit(_compute, plan, recipe, tensor, rows, prepared)

    blocks = deque(submit(rows) for rows in islice(ranges, ahead))
    while blocks:
        block = blocks.popleft().result()
        following = next(ranges, None)
        if following is not None:
            blocks.append(submit(following))
        yield block


def _prepare(plan: MergePlan, recipe: MergeRecipe, tensor: TensorPlan) -> dict[int, Any]:
    """The statistics over the whole tensor that its blockwise method calls need before it can
    be computed block by block, gathered by reading the inputs in flat ranges."""
    prepared: dict[int, Any] = {}
    compute = _compute_dtype(plan, recipe, tensor.name)
    read = _reader(plan, recipe, tensor, compute)
    whole = _context(plan, recipe, tensor, tensor.shape, read, compute, prepared)

    def flat(start: int, stop: int) -> TensorContext:
        read = _reader(plan, recipe, tensor, compute, elements=(start, stop))
        return _context(plan, recipe, tensor, (stop - start,), read, compute, prepared, start)

    recipe.expression.prepare(whole, flat)
    return prepared


def _compute(
    plan: MergePlan,
    recipe: MergeRecipe,
    tensor: TensorPlan,
    rows: tuple[int, int] | None,
    prepared: dict[int, Any] | None = None,
    stream: OrderedRandomStream | None = None,
) -> torch.Tensor:
    shape = tensor.shape if rows is None else (rows[1] - rows[0], *tensor.shape[1:])
    if tensor.fate == "copy":
        value = plan.models[tensor.source].get(tensor.name, rows)
        if not all_finite(value, tensor.out_dtype):
            raise _non_finite_input(plan, tensor.source, tensor.name, [tensor.out_dtype])
        return value.to(tensor.out_dtype)
    compute = _compute_dtype(plan, recipe, tensor.name)
    inputs: list[tuple[str, str]] = []  # (model, tensor name) of every input read
    read = _reader(plan, recipe, tensor, compute, rows=rows, record=inputs)
    offset = rows[0] * math.prod(tensor.shape[1:]) if rows is not None else 0
    context = _context(plan, recipe, tensor, shape, read, compute, prepared or {}, offset)
    if stream is None:
        value = recipe.expression.evaluate(context)
    else:
        with stream.turn(tensor.name) as generator:
            context.generator = generator
            value = recipe.expression.evaluate(context)
    if tuple(value.shape) != shape:
        raise RuntimeError(
            f"The merge gave {tensor.name!r} the shape {tuple(value.shape)}, expected {shape}"
        )
    if not all_finite(value, tensor.out_dtype):
        raise _non_finite_result(plan, recipe, tensor, inputs)
    return value.to(tensor.out_dtype)


def _non_finite_result(
    plan: MergePlan, recipe: MergeRecipe, tensor: TensorPlan, inputs: list[tuple[str, str]]
) -> NonFiniteError:
    """The error for a merged block with NaN or infinite values: the first input tensor that has
    them or overflows a dtype it is cast to (read whole: a blockwise method's statistics come
    from all of it), else the merge itself."""
    casts = [recipe.load_dtype, _compute_dtype(plan, recipe, tensor.name)]
    for label, name in dict.fromkeys(inputs):
        error = _non_finite_input(plan, label, name, [dtype for dtype in casts if dtype])
        if error is not None:
            return error
    return NonFiniteError(
        f"The merge gives tensor {tensor.name!r} NaN or infinite values although its inputs "
        f"are finite: check the parameters of {recipe.expression!r} for this tensor (weights, "
        f"t, lambda) and whether {_dtype_name(tensor.out_dtype)} can hold the result"
    )


def _non_finite_input(
    plan: MergePlan, label: str, name: str, casts: Sequence[torch.dtype]
) -> NonFiniteError | None:
    """The error for an input tensor that holds NaN or infinite values or overflows one of the
    dtypes it is cast to, or None."""
    checkpoint = plan.models[label]
    value = checkpoint.get(name)
    where = f"{checkpoint.file_of(name)}: tensor {name!r} of model {label!r}"
    if not all_finite(value):
        return NonFiniteError(f"{where} holds NaN or infinite values; a merge of it would too")
    for dtype in casts:
        if not all_finite(value, dtype):
            return NonFiniteError(f"{where} overflows {_dtype_name(dtype)}, a dtype it is cast to")
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _reader(
    plan: MergePlan,
    recipe: MergeRecipe,
    tensor: TensorPlan,
    compute: torch.dtype,
    rows: tuple[int, int] | None = None,
    elements: tuple[int, int] | None = None,
    record: list[tuple[str, str]] | None = None,
) -> Callable[..., torch.Tensor]:
    """`read(model, name=None)`: an input tensor (its `rows`, or a flat range of `elements`),
    cast to `load_dtype` if set, then to the `compute` dtype; (model, name) appended to
    `record`."""

    def read(model: Model, name: str | None = None) -> torch.Tensor:
        checkpoint = plan.models[model.name]
        if record is not None:
            record.append((model.name, name or tensor.name))
        if elements is None:
            value = checkpoint.get(name or tensor.name, rows)
        else:
            value = checkpoint.get_flat(name or tensor.name, *elements)
        if recipe.load_dtype is not None:
            value = value.to(recipe.load_dtype)
        return value.to(compute)

    return read


def _context(
    plan: MergePlan,
    recipe: MergeRecipe,
    tensor: TensorPlan,
    shape: tuple[int, ...],
    read: Callable[..., torch.Tensor],
    compute: torch.dtype,
    prepared: dict[int, Any],
    offset: int = 0,
) -> TensorContext:
    return TensorContext(
        name=tensor.name,
        read=read,
        compute_dtype=compute,
        seed=recipe.seed,
        num_layers=plan.num_layers,
        shape=shape,
        offset=offset,
        prepared=prepared,
    )


def _compute_dtype(plan: MergePlan, recipe: MergeRecipe, name: str) -> torch.dtype:
    return recipe.compute_dtype or _promoted_dtype(plan, recipe, name)


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
