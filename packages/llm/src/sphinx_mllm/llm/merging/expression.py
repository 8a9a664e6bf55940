"""The merge algebra: expressions over whole checkpoints, evaluated lazily, tensor by tensor.

    real, syn = Model("llm_real"), Model("llm_syn")
    mixed = 0.5 * real + 0.5 * syn                      # SPHINX's weight mix
    tuned = base + 0.3 * (chat - base)                  # a task vector
    merged = ties(base=base, models=[a, b], density=0.5)  # a method inside an expression

Linear parts are folded before evaluation (`A + 0.3 * (B - A)` reads A once, as 0.7 A + 0.3 B),
and within one output tensor every input tensor is read at most once (a per-tensor cache).
Arithmetic happens in the context's compute dtype (fp32 by default, fp64 on request); the
result is rounded once, by the caller, to the output dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import torch


@dataclass
class TensorContext:
    """Everything needed to evaluate one output tensor."""

    name: str
    read: Callable[..., torch.Tensor]  # read(model, name=None): an input tensor, ready to compute
    compute_dtype: torch.dtype = torch.float32
    seed: int = 0
    num_layers: int | None = None
    shape: tuple[int, ...] | None = None  # the output tensor's shape (or this block's)
    offset: int = 0  # the flat index, in the whole tensor, of this block's first element
    generator: torch.Generator | None = None  # a shared random stream's, during this tensor's turn
    cache: dict[int, torch.Tensor] = field(default_factory=dict)
    # The statistics of blockwise method calls over the whole tensor, by id (see `prepare`)
    prepared: dict[int, Any] = field(default_factory=dict)


FlatContexts = Callable[[int, int], TensorContext]
"""`flat(start, stop)`: a context whose reads give elements [start, stop) of the flattened
tensors (and shares the `prepared` statistics of the whole tensor's context)."""


class Expression(ABC):
    """A lazily evaluated checkpoint-valued expression."""

    @abstractmethod
    def models(self) -> Iterator[Model]:
        """The model leaves, in first-appearance order (duplicates possible)."""

    @abstractmethod
    def evaluate(self, context: TensorContext) -> torch.Tensor:
        """The value of this expression for the context's tensor."""

    def linear_terms(self) -> list[tuple[float, Expression]]:
        """This expression as sum(coefficient * term) over non-linear terms."""
        return [(1.0, self)]

    def contributes(self, tensor_name: str) -> bool:
        """False when this expression is zero for `tensor_name` (e.g. a LoRA update elsewhere)."""
        return True

    @property
    def elementwise(self) -> bool:
        """True when each output element depends only on the same element of the inputs, so a
        tensor can be computed block of rows by block of rows (bit-identical, less memory)."""
        return False

    @property
    def blockwise(self) -> bool:
        """True when, once `prepare` has gathered its statistics over the whole tensor, the
        tensor can be computed block of rows by block of rows like an elementwise one."""
        return self.elementwise

    def prepare(self, context: TensorContext, flat: FlatContexts) -> None:
        """Gather into `context.prepared` the whole-tensor statistics that the blockwise method
        calls in this expression need (reading the inputs through `flat`); leaves have none."""
        return

    def problems(self, reference: Any) -> list[str]:
        """Problems with inputs that are not model leaves (checked against the reference)."""
        return []

    def parameter_problems(self, tensor_name: str, num_layers: int | None) -> list[str]:
        """Problems with the parameters of the method calls in this expression once resolved
        for one tensor (e.g. weights that sum to 0 under `normalize`)."""
        return []

    def input_paths(self) -> Iterator[Path]:
        """Every checkpoint or adapter this expression reads (an output must never replace
        a directory that holds one)."""
        for model in self.models():
            yield model.path

    # -- operators: linear combinations with scalars ---------------------------------------------

    def __add__(self, other: Expression) -> Expression:
        return LinearCombination.of([(1.0, self), (1.0, _as_expression(other, "+"))])

    def __radd__(self, other: Expression) -> Expression:
        return _as_expression(other, "+") + self

    def __sub__(self, other: Expression) -> Expression:
        return LinearCombination.of([(1.0, self), (-1.0, _as_expression(other, "-"))])

    def __rsub__(self, other: Expression) -> Expression:
        return _as_expression(other, "-") - self

    def __mul__(self, factor: float) -> Expression:
        if not isinstance(factor, Real) or isinstance(factor, bool):
            raise TypeError(
                f"A checkpoint can be multiplied by a number, not {type(factor).__name__}"
            )
        if not math.isfinite(factor):
            raise ValueError(f"A checkpoint can be multiplied by a finite number, not {factor}")
        return LinearCombination.of([(float(factor), self)])

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Expression:
        if not isinstance(divisor, Real) or isinstance(divisor, bool) or divisor == 0:
            raise TypeError(f"A checkpoint can be divided by a non-zero number, not {divisor!r}")
        return self * (1.0 / float(divisor))

    def __neg__(self) -> Expression:
        return self * -1.0


def _as_expression(value: object, operator: str) -> Expression:
    if isinstance(value, Expression):
        return value
    raise TypeError(
        f"Cannot apply {operator!r} to a checkpoint and {type(value).__name__} {value!r}: adding a "
        "constant to every weight is not a merge (scale checkpoints by numbers instead)"
    )


class Model(Expression):
    """A leaf: one input checkpoint, by path (opened by the evaluator) and label."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name

    def __repr__(self) -> str:
        return f"Model({self.name!r})"

    def models(self) -> Iterator[Model]:
        yield self

    @property
    def elementwise(self) -> bool:
        return True

    def evaluate(self, context: TensorContext) -> torch.Tensor:
        key = id(self)
        if key not in context.cache:
            context.cache[key] = context.read(self)
        return context.cache[key]


class LinearCombination(Expression):
    """sum(coefficient * term), with nested combinations flattened and equal terms merged."""

    def __init__(self, terms: list[tuple[float, Expression]]) -> None:
        self.terms = terms

    @classmethod
    def of(cls, terms: list[tuple[float, Expression]]) -> LinearCombination:
        folded: dict[int, list] = {}
        for coefficient, expression in terms:
            for inner_coefficient, term in expression.linear_terms():
                entry = folded.setdefault(id(term), [0.0, term])
                entry[0] += coefficient * inner_coefficient
        return cls([(coefficient, term) for coefficient, term in folded.values()])

    def __repr__(self) -> str:
        return " + ".join(f"{coefficient:g} * {term!r}" for coefficient, term in self.terms)

    def linear_terms(self) -> list[tuple[float, Expression]]:
        return list(self.terms)

    def models(self) -> Iterator[Model]:
        for _, term in self.terms:
            yield from term.models()

    def contributes(self, tensor_name: str) -> bool:
        return any(term.contributes(tensor_name) for _, term in self.terms)

    @property
    def elementwise(self) -> bool:
        return all(term.elementwise for _, term in self.terms)

    @property
    def blockwise(self) -> bool:
        return all(term.blockwise for _, term in self.terms)

    def prepare(self, context: TensorContext, flat: FlatContexts) -> None:
        for coefficient, term in self.terms:
            if coefficient != 0.0 and term.contributes(context.name):
                term.prepare(context, flat)

    def problems(self, reference: Any) -> list[str]:
        return [problem for _, term in self.terms for problem in term.problems(reference)]

    def parameter_problems(self, tensor_name: str, num_layers: int | None) -> list[str]:
        return [
            problem
            for coefficient, term in self.terms
            if coefficient != 0.0 and term.contributes(tensor_name)
            for problem in term.parameter_problems(tensor_name, num_layers)
        ]

    def input_paths(self) -> Iterator[Path]:
        for _, term in self.terms:
            yield from term.input_paths()

    def evaluate(self, context: TensorContext) -> torch.Tensor:
        total = None
        for coefficient, term in self.terms:
            if coefficient == 0.0 or not term.contributes(context.name):
                continue
            # c * x rounded, then added and rounded: the order a hand computation has (a fused
            # multiply-add would round once and differ from it in the last bit)
            scaled = term.evaluate(context) * coefficient  # a new tensor: cached inputs untouched
            total = scaled if total is None else total.add_(scaled)
        if total is None:  # nothing contributes: the zero tensor of the output's shape
            return torch.zeros(context.shape, dtype=context.compute_dtype)
        return total


class MethodCall(Expression):
    """A merge method applied to sub-expressions, e.g. `ties(base=A, models=[B, C], density=0.5)`.

    `parameters` are the method's global parameters; `model_parameters[i]` those of models[i].
    Parameter values may be per-tensor (a gradient over layers or a list of filters), resolved
    for each tensor by `resolve_parameter`.
    """

    def __init__(
        self,
        method: Any,
        base: Expression | None,
        models: list[Expression],
        parameters: dict[str, Any],
        model_parameters: list[dict[str, Any]],
    ) -> None:
        self.method = method
        self.base = base
        self.inputs = models
        self.parameters = parameters
        self.model_parameters = model_parameters

    def __repr__(self) -> str:
        return f"{self.method.name}(base={self.base!r}, models={self.inputs!r}, {self.parameters})"

    def models(self) -> Iterator[Model]:
        if self.base is not None:
            yield from self.base.models()
        for model in self.inputs:
            yield from model.models()

    def _all_inputs(self) -> list[Expression]:
        return [*([self.base] if self.base is not None else []), *self.inputs]

    @property
    def elementwise(self) -> bool:
        return bool(getattr(self.method, "elementwise", False)) and all(
            i.elementwise for i in self._all_inputs()
        )

    @property
    def blockwise(self) -> bool:
        return self.method.is_blockwise(self) and all(i.blockwise for i in self._all_inputs())

    def prepare(self, context: TensorContext, flat: FlatContexts) -> None:
        for item in self._all_inputs():
            item.prepare(context, flat)
        if not getattr(self.method, "elementwise", False):
            context.prepared[id(self)] = self.method.prepare(self, context, flat)

    def problems(self, reference: Any) -> list[str]:
        return [problem for item in self._all_inputs() for problem in item.problems(reference)]

    def parameter_problems(self, tensor_name: str, num_layers: int | None) -> list[str]:
        inner = [
            problem
            for item in self._all_inputs()
            for problem in item.parameter_problems(tensor_name, num_layers)
        ]
        return inner + self.method.tensor_problems(self, tensor_name, num_layers)

    def input_paths(self) -> Iterator[Path]:
        for item in self._all_inputs():
            yield from item.input_paths()

    def evaluate(self, context: TensorContext) -> torch.Tensor:
        if id(self) in context.prepared:
            return self.method.apply_block(self, context, context.prepared[id(self)])
        return self.method.apply(self, context)
