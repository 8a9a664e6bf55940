"""Merge configs from YAML files: ours (named models and a merge expression) and mergekit's.

Ours:

    models: {real: ./llm_real, syn: ./llm_syn}   # label -> checkpoint path (relative: to this file)
    merge: 0.5 * real + 0.5 * syn                 # the merge algebra, as text
    reference: real                               # names, shapes, config files (default: first)
    include: ["*"]                                # shell wildcards over tensor names
    exclude: []
    copy_from: real                               # for excluded tensors; null skips them
    compute_dtype: float32                        # or float64
    out_dtype: bfloat16                           # default: the reference's dtypes
    seed: 0                                       # DARE's masks

A mergekit config (it has `merge_method`) is run with mergekit's semantics (notes in
tests/llm/oracle/MERGEKIT_SEMANTICS.md): computed in the inputs' dtype, parameters resolved
model -> top level -> default, filters as substrings, lists as gradients. Where mergekit
silently ignores a mistake (an unknown parameter, a shared parameter under one model) this
is an error here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from sphinx_mllm.llm.merging.expression import Expression, Model
from sphinx_mllm.llm.merging.lora import lora
from sphinx_mllm.llm.merging.methods.base import REQUIRED, MergeMethod
from sphinx_mllm.llm.merging.parameters import NO_DEFAULT, Filtered, Gradient
from sphinx_mllm.llm.merging.parse import HELPERS, ExpressionSyntaxError, parse_expression
from sphinx_mllm.llm.merging.runner import MergeRecipe
from sphinx_mllm.llm.merging.stacking import LayerSlice, LayerStack, layer_stack
from sphinx_mllm.llm.merging.writer import read_model_config
from sphinx_mllm.llm.registry import get_merge_method

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
OUR_KEYS = {
    "models",
    "merge",
    "reference",
    "include",
    "exclude",
    "copy_from",
    "compute_dtype",
    "out_dtype",
    "seed",
}
MERGEKIT_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
}
MERGEKIT_UNSUPPORTED = {
    "tokenizer_source": "vocabulary alignment",
    "tokenizer": "vocabulary alignment",
    "chat_template": "chat templates",
    "modules": "per-module configs",
}


class ConfigError(ValueError):
    """A merge config that cannot be run, with the offending key named."""


def load_config(path: str | Path) -> MergeRecipe:
    """The recipe a YAML file describes (ours or mergekit's)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"Cannot read the merge config {path}: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a merge config is a mapping, got {type(config).__name__}")
    try:
        if "merge_method" in config:
            recipe = from_mergekit(config, path.parent)
        else:
            recipe = from_ours(config, path.parent)
    except (ValueError, TypeError, LookupError) as error:
        raise ConfigError(f"{path}: {error}") from error
    recipe.config_file = path
    return recipe


def _dtype(value: Any, key: str) -> torch.dtype | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"{key}: {value!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def _locate(path_text: str, root: Path) -> Path:
    """A checkpoint path: absolute, or relative to the working directory (as mergekit resolves
    it) or else to the config file's directory."""
    if not isinstance(path_text, str | Path) or not str(path_text):
        raise ConfigError(f"A model path must be a non-empty string, got {path_text!r}")
    path = Path(path_text).expanduser()
    for candidate in (path, root / path):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"Model {str(path_text)!r} not found (looked in {Path.cwd()} and {root}); only local "
        "checkpoints are read, never the Hugging Face hub"
    )


# -- our format ------------------------------------------------------------------------------------


def from_ours(config: dict[str, Any], root: Path) -> MergeRecipe:
    unknown = set(config) - OUR_KEYS
    if unknown:
        raise ConfigError(f"Unknown keys {sorted(unknown)}; a merge config has {sorted(OUR_KEYS)}")
    if not isinstance(config.get("models"), dict) or not config["models"]:
        raise ConfigError("'models' must map labels to checkpoint paths")
    if "merge" not in config:
        raise ConfigError("'merge' (the merge expression) is missing")
    models = {
        str(label): Model(_locate(path, root), str(label))
        for label, path in config["models"].items()
    }
    helpers = {
        **HELPERS,
        "lora": lambda path, scale=1.0: lora(_locate(path, root), scale),
        "layer_stack": layer_stack,
    }
    try:
        expression = parse_expression(
            str(config["merge"]), models, lambda name: helpers.get(name) or get_merge_method(name)
        )
    except ExpressionSyntaxError as error:
        raise ConfigError(str(error)) from error

    def model(key: str) -> Model | None:
        label = config.get(key)
        if label is None:
            return None
        if not isinstance(label, str) or label not in models:
            raise ConfigError(f"{key}: {label!r} is not one of the models {sorted(models)}")
        return models[label]

    compute_dtype = _dtype(config.get("compute_dtype", "float32"), "compute_dtype")
    if compute_dtype not in (torch.float32, torch.float64):
        raise ConfigError(
            f"compute_dtype: {config.get('compute_dtype')!r} is not float32 or float64"
        )
    seed = config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed: {seed!r} is not an integer")
    return MergeRecipe(
        expression=expression,
        reference=model("reference"),
        include=_patterns(config, "include", ["*"]),
        exclude=_patterns(config, "exclude", []),
        copy_from=model("copy_from") if "copy_from" in config else "reference",
        compute_dtype=compute_dtype,
        out_dtype=_dtype(config.get("out_dtype"), "out_dtype"),
        seed=seed,
        description={"format": "sphinx-merge", **config},
    )


def _patterns(config: dict[str, Any], key: str, default: list[str]) -> list[str]:
    """Shell wildcards: a list of strings, or one string (one pattern, not one per letter)."""
    value = config.get(key, default)
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key}: expected a shell wildcard or a list of them, got {value!r}")
    return value


# -- mergekit's format -----------------------------------------------------------------------------


def from_mergekit(config: dict[str, Any], root: Path) -> MergeRecipe:
    for key, what in MERGEKIT_UNSUPPORTED.items():
        if key in config:
            raise ConfigError(f"mergekit key {key!r} ({what}) is not supported")
    unknown = set(config) - MERGEKIT_KEYS
    if unknown:
        raise ConfigError(
            f"Unknown mergekit keys {sorted(unknown)}; supported: {sorted(MERGEKIT_KEYS)}"
        )
    if not isinstance(config["merge_method"], str):
        raise ConfigError(f"merge_method: expected a method name, got {config['merge_method']!r}")
    method: MergeMethod = get_merge_method(config["merge_method"])
    shared = _parameters(config.get("parameters"), "the top-level 'parameters'")
    labels: dict[str, Model] = {}

    def as_model(text: Any) -> Model:
        if isinstance(text, str) and "+" in text:
            raise ConfigError(
                f"mergekit's 'model+lora' syntax ({text!r}) is not supported; use lora() in our "
                "format"
            )
        if str(text) not in labels:
            labels[str(text)] = Model(_locate(text, root), str(text))
        return labels[str(text)]

    base = as_model(config["base_model"]) if config.get("base_model") else None
    if "slices" in config:
        expression = _mergekit_slices(config["slices"], method, shared, base, as_model)
    else:
        entries = [
            (
                as_model(entry["model"]),
                _parameters(entry.get("parameters"), f"the parameters of {entry['model']!r}"),
            )
            for entry in _entries(config, "models")
        ]
        expression = _mergekit_call(method, base, entries, shared)
    load_dtype = _dtype(config.get("dtype"), "dtype")
    reference = base or next(iter(labels.values()))
    return MergeRecipe(
        expression=expression,
        reference=reference,
        compute_dtype=None,
        load_dtype=load_dtype,
        out_dtype=_dtype(config.get("out_dtype"), "out_dtype") or load_dtype,
        shared_random_stream=method.random,  # mergekit's DARE masks, from `--seed`
        description={"format": "mergekit", **config},
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ConfigError(f"{where} must map parameter names to values, got {value!r}")
    return value


def _entries(config: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = config.get(key)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"'{key}' must be a non-empty list")
    for entry in entries:
        if not isinstance(entry, dict) or "model" not in entry:
            raise ConfigError(f"every entry of '{key}' needs a 'model', got {entry!r}")
    return entries


def _mergekit_call(
    method: MergeMethod, base: Model | None, entries: list[tuple[Model, dict]], shared: dict
) -> Expression:
    if method.base_model == "none":  # mergekit: a base is an ordinary input, appended if unlisted
        inputs = list(entries)
        if base is not None and all(model is not base for model, _ in entries):
            inputs.append((base, {}))
        base = None
    else:
        inputs = [(model, params) for model, params in entries if model is not base]
        for model, params in entries:
            if model is base and params:
                raise ConfigError(
                    f"parameters of the base model {model.name!r} are not used by {method.name}"
                )
    global_values = {}
    for name, value in shared.items():
        parameter = method.parameter(name)
        if not parameter.per_model:
            global_values[name] = _convert(value, parameter.default, name)
    model_values = []
    for model, params in inputs:
        values = {}
        for name in params:
            if not method.parameter(name).per_model:
                raise ConfigError(
                    f"{name!r} is a shared parameter of {method.name}; put it in the top-level "
                    f"'parameters', not under model {model.name!r} (mergekit would ignore it)"
                )
        for parameter in method.parameters:
            if parameter.per_model:
                chain = [params.get(parameter.name), shared.get(parameter.name)]
                converted = _chain(chain, parameter.default, parameter.name)
                if converted is not REQUIRED:
                    values[parameter.name] = converted
        model_values.append(values)
    return method.call(base, [model for model, _ in inputs], global_values, model_values)


def _chain(values: list[Any], default: Any, name: str) -> Any:
    """A parameter resolved by the first scope that has a value for the tensor."""
    present = [value for value in values if value is not None]
    if not present:
        return default
    first, rest = present[0], _chain(present[1:], default, name)
    return _convert(first, rest, name)


def _convert(value: Any, fallback: Any, name: str) -> Any:
    """mergekit value syntax -> ours: lists of numbers are gradients; `{filter, value}` entries
    (or lists of them) are filters, falling through to `fallback` when none matches. `name`
    (the parameter's) is for the errors."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        rules, default = [], fallback
        for item in value:
            pattern = item.get("filter")
            if "value" not in item or set(item) - {"filter", "value"}:
                raise ConfigError(
                    f"parameter {name!r}: a filter entry is {{filter: PATTERN, value: VALUE}} "
                    f"(filter optional), got {item!r}"
                )
            if pattern is not None and not isinstance(pattern, str):
                raise ConfigError(
                    f"parameter {name!r}: a filter is a substring of tensor names, got {pattern!r}"
                )
            converted = _convert(item["value"], None, name)
            if pattern is None or pattern == "*":
                default = converted
                break
            rules.append((pattern, converted))
        return Filtered(rules, default=NO_DEFAULT if default is REQUIRED else default)
    if isinstance(value, list):
        if not value or not all(
            isinstance(item, int | float) and not isinstance(item, bool) for item in value
        ):
            raise ConfigError(
                f"parameter {name!r}: a gradient is a non-empty list of numbers, got {value!r}"
            )
        return Gradient(value)
    return value


def _mergekit_slices(
    slices: Any, method: MergeMethod, shared: dict, base: Model | None, as_model: Any
) -> Expression:
    if not isinstance(slices, list) or not slices:
        raise ConfigError("'slices' must be a non-empty list")
    parsed = []
    for item in slices:
        sources = item.get("sources") if isinstance(item, dict) else None
        if not isinstance(sources, list) or not sources:
            raise ConfigError(f"every slice needs 'sources', got {item!r}")
        parsed.append([_slice_source(source, as_model) for source in sources])
    if method.name == "passthrough":
        stack = []
        for sources in parsed:
            if len(sources) != 1 or len(sources[0][1]) != 2:
                raise ConfigError(
                    "passthrough slices take exactly one source with a layer_range each"
                )
            model, (start, end), params = sources[0]
            layers = _num_layers(model)
            if layers is not None and end > layers:
                raise ConfigError(
                    f"slice layer_range [{start}, {end}] of {model.name!r} goes beyond its "
                    f"{layers} layers (num_hidden_layers in its config.json)"
                )
            for name in params:
                method.parameter(name)  # an unknown name is an error
            scale = _chain([params.get("scale"), shared.get("scale")], None, "scale")
            stack.append(LayerSlice(model, start, end, scale))
        return LayerStack(stack)
    if len(parsed) != 1:
        raise ConfigError(
            f"{method.name} over several slices is not supported; use one slice or 'models'"
        )
    for model, layer_range, _ in parsed[0]:
        layers = _num_layers(model)
        if layer_range and tuple(layer_range) != (0, layers):
            raise ConfigError(
                f"{method.name}: slice layer_range {list(layer_range)} of {model.name!r} does not "
                f"cover its {layers} layers; only whole-model slices are supported for this method"
            )
    return _mergekit_call(method, base, [(model, params) for model, _, params in parsed[0]], shared)


def _slice_source(source: Any, as_model: Any) -> tuple[Model, tuple[int, ...], dict[str, Any]]:
    """(model, layer_range or (), parameters) of one source of a slice."""
    if not isinstance(source, dict) or "model" not in source:
        raise ConfigError(f"every source of a slice needs a 'model', got {source!r}")
    layer_range = source.get("layer_range", [])
    if layer_range and (
        not isinstance(layer_range, list)
        or len(layer_range) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in layer_range)
        or not 0 <= layer_range[0] < layer_range[1]
    ):
        raise ConfigError(
            f"layer_range of {source['model']!r} is {layer_range!r}; expected [start, end], "
            "integers with 0 <= start < end"
        )
    parameters = _parameters(source.get("parameters"), f"the parameters of {source['model']!r}")
    return as_model(source["model"]), tuple(layer_range), parameters


def _num_layers(model: Model) -> int | None:
    settings = read_model_config(model.path if model.path.is_dir() else model.path.parent)
    return None if settings is None else settings.get("num_hidden_layers")
