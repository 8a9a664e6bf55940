"""Parse a merge expression written as text (in a config file) into the merge algebra, safely:
only model names, numbers, strings, `+ - * /`, lists, dicts, and calls of registered merge
methods and of `gradient(...)` / `filtered(...)` are accepted; nothing is `eval`-ed.

    0.5 * real + 0.5 * syn
    base + 0.3 * (chat - base)
    ties(base=base, models=[a, b], weight=[0.7, 0.3], density=0.5)
    slerp(base=a, models=[b], t=gradient([0, 0.5, 1]))
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from sphinx_mllm.llm.merging.expression import Expression
from sphinx_mllm.llm.merging.parameters import NO_DEFAULT, Filtered, Gradient


class ExpressionSyntaxError(ValueError):
    """A merge expression that is not valid, with the offending part named."""


def gradient(*anchors: Any) -> Gradient:
    """`gradient(0, 0.5, 1)` or `gradient([0, 0.5, 1])`."""
    values = anchors[0] if len(anchors) == 1 and isinstance(anchors[0], list) else list(anchors)
    return Gradient(values)


def filtered(rules: Mapping[str, Any], default: Any = NO_DEFAULT) -> Filtered:
    """`filtered({"self_attn": 0.3, "mlp": 0.7}, default=0.5)`; without a default, a tensor
    that no filter matches is an error."""
    if not isinstance(rules, Mapping) or not all(isinstance(key, str) for key in rules):
        raise TypeError(f"filtered() takes a dict of substring -> value, got {rules!r}")
    return Filtered(list(rules.items()), default)


HELPERS: dict[str, Callable[..., Any]] = {"gradient": gradient, "filtered": filtered}
_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def parse_expression(
    text: str, models: Mapping[str, Expression], methods: Callable[[str], Any]
) -> Expression:
    """The expression `text` over the named `models`; `methods(name)` returns a merge method."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ExpressionSyntaxError(f"Invalid merge expression {text!r}: {error.msg}") from error
    result = _Evaluator(text, models, methods).visit(tree.body)
    if not isinstance(result, Expression):
        raise ExpressionSyntaxError(f"The merge expression {text!r} gives {result!r}, not a model")
    return result


class _Evaluator(ast.NodeVisitor):
    def __init__(
        self, text: str, models: Mapping[str, Expression], methods: Callable[[str], Any]
    ) -> None:
        self.text = text
        self.models = models
        self.methods = methods

    def _fail(self, node: ast.AST, why: str) -> ExpressionSyntaxError:
        part = ast.get_source_segment(self.text.strip(), node) or ast.dump(node)
        return ExpressionSyntaxError(f"In merge expression {self.text!r}: {why}: {part!r}")

    def generic_visit(self, node: ast.AST) -> Any:
        raise self._fail(node, f"{type(node).__name__} is not allowed")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in self.models:
            return self.models[node.id]
        raise self._fail(node, f"unknown model name (models: {sorted(self.models)})")

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, bool | int | float | str):
            return node.value
        raise self._fail(node, "only numbers, booleans and strings are allowed")

    def visit_List(self, node: ast.List) -> list:
        return [self.visit(item) for item in node.elts]

    visit_Tuple = visit_List

    def visit_Dict(self, node: ast.Dict) -> dict:
        if any(key is None for key in node.keys):
            raise self._fail(node, "dict unpacking is not allowed")
        return {
            self.visit(key): self.visit(value)
            for key, value in zip(node.keys, node.values, strict=True)
        }

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.visit(node.operand)
        if not isinstance(operand, int | float | Expression) or isinstance(operand, bool):
            raise self._fail(node, f"only numbers and models can be negated, not {operand!r}")
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return operand
        raise self._fail(node, "only unary + and - are allowed")

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        operation = _OPERATORS.get(type(node.op))
        if operation is None:
            raise self._fail(node, "only + - * / are allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        for operand in (left, right):
            if not isinstance(operand, int | float | Expression) or isinstance(operand, bool):
                raise self._fail(node, f"only numbers and models combine, not {operand!r}")
        try:
            return operation(left, right)
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise self._fail(node, str(error)) from error

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name):
            raise self._fail(
                node, "only calls of merge methods, gradient() and filtered() are allowed"
            )
        arguments = [self.visit(argument) for argument in node.args]
        keywords = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise self._fail(node, "**keywords are not allowed")
            keywords[keyword.arg] = self.visit(keyword.value)
        function = HELPERS.get(node.func.id)
        try:
            if function is None:
                function = self.methods(node.func.id)
            return function(*arguments, **keywords)
        except (TypeError, ValueError, LookupError) as error:
            raise self._fail(node, str(error)) from error
