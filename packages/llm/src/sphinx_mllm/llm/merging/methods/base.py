"""The interface of a merge method, and how a call of one becomes a lazy expression.

A method is an object (registered in `sphinx_mllm_merge_methods`) with a name, whether it takes a
base model, and its parameters: global ones (`normalize`, `lambda`, `t`) and per-model ones
(`weight`, `density`). Calling it builds a `MethodCall` expression:

    ties(base=A, models=[B, C], weight=[0.7, 0.3], density=0.5)

A per-model parameter given as one value applies to every model, as a list to each in turn;
a `Gradient` or `Filtered` value varies per tensor. `merge` computes one output tensor from the
input tensors, in the compute dtype.

Each parameter declares what it accepts (`kind`, a range or choices), checked in one place
(`MethodParameter.problem`) when a call is built, for every value a gradient or filter can take;
constraints between parameters (`value_problems`, e.g. weights that sum to 0 under `normalize`)
are checked then too when the values are plain, and per tensor when the plan is made.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sphinx_mllm.llm.merging.expression import (
    Expression,
    FlatContexts,
    MethodCall,
    TensorContext,
)
from sphinx_mllm.llm.merging.parameters import NO_DEFAULT, Filtered, Gradient, resolve

REQUIRED = object()
ParameterKind = Literal["any", "number", "bool", "choice"]


@dataclass(frozen=True)
class MethodParameter:
    """One parameter of a method: global, or one value per model, and what it accepts: a finite
    number within `[minimum, maximum]`, a bool, one of `choices`, or (a plugin that declares
    nothing) anything; None too when `optional`."""

    name: str
    default: Any = REQUIRED
    per_model: bool = False
    help: str = ""
    kind: ParameterKind = "any"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    @property
    def expected(self) -> str:
        """What the parameter accepts, in words."""
        if self.kind == "number":
            low = "-inf" if self.minimum is None else f"{self.minimum:g}"
            high = "inf" if self.maximum is None else f"{self.maximum:g}"
            text = "a finite number" + (
                "" if self.minimum is None and self.maximum is None else f" in [{low}, {high}]"
            )
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = f"one of {list(self.choices)}"
        else:
            text = "any value"
        return f"{text} or null" if self.optional else text

    def problem(self, value: Any) -> str | None:
        """Why `value` is not accepted (every value a gradient or filter can take is checked),
        or None."""
        if isinstance(value, Filtered):
            values = [rule for _, rule in value.rules]
            values += [] if value.default is NO_DEFAULT else [value.default]
            return next(filter(None, map(self.problem, values)), None)
        if isinstance(value, Gradient):
            if self.kind not in ("number", "any"):
                return f"a gradient {list(value.anchors)}, but it takes {self.expected}"
            return next(filter(None, map(self.problem, value.anchors)), None)
        if self.kind == "any" or (value is None and self.optional) or self._accepts(value):
            return None
        return f"{value!r}, but it takes {self.expected}"

    def _accepts(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
        )


class MergeMethod(ABC):
    """A merge method; subclasses set the class attributes and implement `merge`."""

    name: str
    summary: str
    base_model: Literal["required", "optional", "none"] = "none"
    parameters: tuple[MethodParameter, ...] = ()
    min_models: int = 1
    max_models: int | None = None
    elementwise: bool = False  # each output element from the same input elements only
    # Computed in blocks after `prepare` has gathered statistics over the whole tensor
    blockwise: bool = False
    random: bool = False  # draws random numbers (from `context.generator` when one is lent)

    def __repr__(self) -> str:
        return f"<merge method {self.name}>"

    def parameter(self, name: str) -> MethodParameter:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        known = [parameter.name for parameter in self.parameters]
        raise ValueError(
            f"Merge method {self.name!r} has no parameter {name!r}; its parameters: {known}"
        )

    def __call__(
        self, base: Expression | None = None, models: Sequence[Expression] = (), **values: Any
    ) -> MethodCall:
        """A lazy `MethodCall` of this method (see the module docstring)."""
        models = list(models)
        self._check_inputs(base, models)
        global_values: dict[str, Any] = {}
        model_values: list[dict[str, Any]] = [{} for _ in models]
        for name, value in values.items():
            parameter = self.parameter(name)
            if not parameter.per_model:
                global_values[name] = value
            elif isinstance(value, list | tuple):
                if len(value) != len(models):
                    raise ValueError(
                        f"{self.name}: {name} has {len(value)} values for {len(models)} models"
                    )
                for index, item in enumerate(value):
                    model_values[index][name] = item
            else:
                for entry in model_values:
                    entry[name] = value
        return self.call(base, models, global_values, model_values)

    def call(
        self,
        base: Expression | None,
        models: list[Expression],
        global_values: dict[str, Any],
        model_values: list[dict[str, Any]],
    ) -> MethodCall:
        """A `MethodCall` from values already split into global and per-model ones; defaults are
        filled in and unknown or missing parameters are errors."""
        self._check_inputs(base, models)
        global_values = self._complete(global_values, per_model=False, where="")
        model_values = [
            self._complete(entry, per_model=True, where=f" for model {index} ({_label(model)})")
            for index, (entry, model) in enumerate(zip(model_values, models, strict=True))
        ]
        plain = [*global_values.values(), *(v for entry in model_values for v in entry.values())]
        if not any(isinstance(value, Filtered | Gradient) for value in plain):
            labels = [_label(model) for model in models]
            problems = self.value_problems(labels, model_values, global_values)
            if problems:
                raise ValueError(f"{self.name}: {'; '.join(problems)}")
        return MethodCall(self, base, models, global_values, model_values)

    def _complete(self, values: dict[str, Any], *, per_model: bool, where: str) -> dict[str, Any]:
        for name, value in values.items():
            parameter = self.parameter(name)
            if parameter.per_model != per_model:
                kind = "per-model" if not per_model else "global"
                raise ValueError(f"{self.name}: {name!r} is a {kind} parameter, given{where}")
            problem = parameter.problem(value)
            if problem is not None:
                raise ValueError(f"{self.name}: parameter {name!r}{where} is {problem}")
        completed = dict(values)
        for parameter in self.parameters:
            if parameter.per_model == per_model and parameter.name not in completed:
                if parameter.default is REQUIRED:
                    raise ValueError(
                        f"{self.name}: parameter {parameter.name!r} is required{where}"
                    )
                completed[parameter.name] = parameter.default
        return completed

    def _check_inputs(self, base: Expression | None, models: list[Expression]) -> None:
        if self.base_model == "required" and base is None:
            raise ValueError(f"Merge method {self.name!r} needs a base model")
        if self.base_model == "none" and base is not None:
            raise ValueError(f"Merge method {self.name!r} takes no base model")
        for item in [base, *models]:
            if item is not None and not isinstance(item, Expression):
                raise TypeError(
                    f"{self.name}: models must be checkpoints or expressions, got {item!r}"
                )
        if len(models) < self.min_models or (
            self.max_models is not None and len(models) > self.max_models
        ):
            bounds = (
                f"{self.min_models}"
                if self.max_models == self.min_models
                else f"at least {self.min_models}"
            )
            raise ValueError(f"Merge method {self.name!r} takes {bounds} models, got {len(models)}")

    def apply(self, call: MethodCall, context: TensorContext) -> torch.Tensor:
        """Evaluate a call of this method for the context's tensor."""
        model_params, params = self.resolved_parameters(call, context)
        base, tensors = _evaluate_inputs(call, context)
        return self.merge(base, tensors, model_params, params, context)

    def apply_block(self, call: MethodCall, context: TensorContext, state: Any) -> torch.Tensor:
        """Evaluate a call of a blockwise method for the context's block, given the state its
        `prepare` returned for the whole tensor."""
        model_params, params = self.resolved_parameters(call, context)
        base, tensors = _evaluate_inputs(call, context)
        return self.merge_block(state, base, tensors, model_params, params, context)

    def is_blockwise(self, call: MethodCall) -> bool:
        """Whether this call can be computed block by block (after `prepare`, unless
        elementwise); a method whose parameters decide it overrides this."""
        return self.elementwise or self.blockwise

    def resolved_parameters(
        self, call: MethodCall, context: TensorContext
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The call's per-model and global parameters, resolved for the context's tensor."""
        return _resolve_all(call, context.name, context.num_layers)

    def value_problems(
        self, labels: list[str], model_params: list[dict[str, Any]], params: dict[str, Any]
    ) -> list[str]:
        """What is wrong with a combination of (resolved, individually valid) values, e.g.
        weights that sum to 0 under `normalize`; `labels` name the models. A method with such
        constraints overrides this."""
        return []

    def tensor_problems(
        self, call: MethodCall, tensor_name: str, num_layers: int | None
    ) -> list[str]:
        """`value_problems` of the call's parameters resolved for one tensor (a filter that
        matches nothing, without a default, is one too)."""
        try:
            model_params, params = _resolve_all(call, tensor_name, num_layers)
        except ValueError as error:
            return [f"{self.name}: {error}"]
        labels = [_label(model) for model in call.inputs]
        return [
            f"{self.name}: {problem}"
            for problem in self.value_problems(labels, model_params, params)
        ]

    def prepare(self, call: MethodCall, context: TensorContext, flat: FlatContexts) -> Any:
        """For a blockwise method: the statistics of the whole tensor that `merge_block` needs,
        from the inputs read in flat ranges: `flat(start, stop)` is a context to evaluate
        `call.base` and `call.inputs` in."""
        raise NotImplementedError(f"Merge method {self.name!r} is not blockwise")

    def merge_block(
        self,
        state: Any,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        """For a blockwise method: one block of the output from the same block of the inputs
        (`context.offset` says where the block starts in the flat tensor)."""
        raise NotImplementedError(f"Merge method {self.name!r} is not blockwise")

    @abstractmethod
    def merge(
        self,
        base: torch.Tensor | None,
        tensors: list[torch.Tensor],
        model_params: list[dict[str, Any]],
        params: dict[str, Any],
        context: TensorContext,
    ) -> torch.Tensor:
        """One output tensor from the inputs (in the compute dtype)."""


def _resolve_all(
    call: MethodCall, tensor_name: str, num_layers: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    params = {name: resolve(v, tensor_name, num_layers) for name, v in call.parameters.items()}
    model_params = [
        {name: resolve(v, tensor_name, num_layers) for name, v in entry.items()}
        for entry in call.model_parameters
    ]
    return model_params, params


def _evaluate_inputs(
    call: MethodCall, context: TensorContext
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    base = call.base.evaluate(context) if call.base is not None else None
    return base, [model.evaluate(context) for model in call.inputs]


def _label(model: Expression) -> str:
    return getattr(model, "name", type(model).__name__)


def tensor_generator(context: TensorContext, stream: str) -> torch.Generator:
    """A random generator for one tensor and one purpose (e.g. one model's DARE mask), seeded
    from the run's seed and the tensor's name only: the same masks whatever the order or the
    number of threads that compute the tensors."""
    digest = hashlib.sha256(f"{context.seed}\0{context.name}\0{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
