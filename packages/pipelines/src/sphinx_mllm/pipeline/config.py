"""One config describes a model: the encoders, view splitter and mixer (with its projectors), the
LLM, the tokenizer, the chat template and where visual tokens go. Every component is named by
its registry name plus arguments, so a component is swapped by changing a name; the config
round-trips through YAML and is saved, fully resolved, with every checkpoint.

```yaml
vision:
  splitter: single
  splitter_options: {base_size: 224}
  encoders:
    - {name: clip_vit_l14, image_size: 224}
    - {name: dinov2_vitg14, image_size: 224}
  mixer: channel_concat
  mixer_options: {projector: linear_ln}
llm: {name: llama2_13b}
template: sphinx
placement: prefix
```

The config classes are pydantic dataclasses: each is typed, and checked whenever it is made, from
YAML or in Python. Every problem is a `ConfigError`, one line per problem naming the field by
its path: `vision.encoders[1].image_size: expected an integer, got 'big'`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import typing_extensions
import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

Placement = Literal["placeholder", "prefix", "after_question"]
Dtype = Literal["float32", "bfloat16", "float16"]
PLACEMENTS: tuple[str, ...] = get_args(Placement)
DTYPES: tuple[str, ...] = get_args(Dtype)

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not describe what it should: one line per problem, each naming the
    field by its path (`vision.encoders[1].image_size: expected an integer, got 'big'`)."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def within(self, prefix: str) -> ConfigError:
        """The same problems, each line prefixed (`prefix: problem`)."""
        return ConfigError(*(f"{prefix}: {problem}" for problem in self.problems))


# -- the types of config fields (a bool is no number, and a mapping's keys are strings) ----------

# pydantic dataclasses built from YAML: no unknown fields; nested mappings become config objects
CONFIG = ConfigDict(extra="forbid")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "expected a number")
    return value


# a finite number; text that reads as one is taken (YAML reads `1e-3` as text)
Number = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
Mapping = dict[StrictStr, Any]


def field_problem(name: str, message: str, value: Any) -> ValidationError:
    """A problem with field `name` found by a check of the whole object (`raise` it in a
    model validator, so that it is reported at the field's path)."""
    error = PydanticCustomError("config", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "config", [{"type": error, "loc": (name,), "input": value}]
    )


# -- checking --------------------------------------------------------------------------------------


@functools.cache
def _adapter(cls: Any) -> TypeAdapter:
    return TypeAdapter(cls)


def validate(cls: type[T], data: Any) -> T:
    """`data` (plain data or a `cls`) checked and converted to `cls`; every problem at once in
    one `ConfigError`."""
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as error:
        raise ConfigError(*problems(error, cls)) from error


C = TypeVar("C", bound=type)


def config_errors(cls: C | None = None, *, label: str | Callable[..., str] | None = None) -> Any:
    """Make the constructor of the pydantic dataclass `cls` raise `ConfigError` rather than
    pydantic's `ValidationError`; with `label` (a string, or a function of the constructor's
    arguments), each line of it starts with the label."""

    def wrap(cls: C) -> C:
        init = cls.__init__
        if not getattr(cls, "__pydantic_complete__", False):  # pydantic would replace __init__
            raise TypeError(f"{cls.__name__} is not a complete pydantic dataclass")

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as error:
                lines = problems(error, cls)
                if label is not None:
                    prefix = label if isinstance(label, str) else label(*args, **kwargs)
                    lines = [f"{prefix} {line}" for line in lines]
                raise ConfigError(*lines) from error

        cls.__init__ = __init__
        return cls

    return wrap if cls is None else wrap(cls)


# -- the model config ------------------------------------------------------------------------------


@config_errors
@dataclass(config=CONFIG)
class EncoderSpec:
    """One encoder of the visual stack: its registry name, the factory's arguments (`pretrained`,
    `feature_layer`, ...), and the side and interpolation the views are fed to it at (default:
    the encoder's own input size), in float16 when `half_precision_resize` (as SPHINX's released
    code resizes); `resample_from: canvas` makes its views from the whole padded image instead of
    the splitter's views (see sphinx-mixer's `EncoderStream`)."""

    name: StrictStr
    options: Mapping = field(default_factory=dict)
    image_size: PositiveInt | None = None
    resize: StrictStr = "bicubic"
    half_precision_resize: StrictBool = False
    resample_from: Literal["view", "canvas"] = "view"


@config_errors
@dataclass(config=CONFIG)
class VisionConfig:
    """The visual stack: a view splitter, one or more encoders (an encoder given by its name
    alone is `{name: NAME}`), and a mixer (whose options name its projectors)."""

    encoders: list[EncoderSpec]
    splitter: StrictStr = "single"
    splitter_options: Mapping = field(default_factory=dict)
    mixer: StrictStr = "channel_concat"
    mixer_options: Mapping = field(default_factory=dict)

    @field_validator("encoders", mode="before")
    @classmethod
    def _names_alone(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("encoders")
    @classmethod
    def _at_least_one(cls, value: list[EncoderSpec]) -> list[EncoderSpec]:
        if not value:
            raise PydanticCustomError("empty", "must not be empty: a model needs an encoder")
        return value


@config_errors
@dataclass(config=CONFIG)
class LLMConfig:
    """The language model: a sphinx-llm preset, a local model directory or a hub id, with config
    overrides (`num_hidden_layers: 2`, ...) and where its weights come from (`load_llm`); or,
    when `config` is given, the architecture that whole transformers config (with its
    `model_type`) describes, random-initialised (an imported model's LLM; `name` is then only
    a label)."""

    name: StrictStr
    overrides: Mapping = field(default_factory=dict)
    pretrained: StrictBool | StrictStr | None = None
    config: Mapping | None = None


@config_errors
@dataclass(config=CONFIG)
class TokenizerConfig:
    """Where the tokenizer comes from: `source` is a tokenizer directory or hub id, `"llm"` for
    the language model's own, or `"demo"` for the byte-level BPE shipped with sphinx-pipeline.
    `image_token` is added as a special token when the tokenizer lacks it; `image_token_id`
    fixes its id (needed only when there is no tokenizer and ids are made by hand). A tokenizer
    with more ids than the LLM's embedding table is an error unless `resize_embeddings` grows
    the table."""

    source: StrictStr = "llm"
    image_token: StrictStr = "<image>"
    image_token_id: Annotated[StrictInt, Field(ge=0)] | None = None
    pad_token: StrictStr | None = None
    resize_embeddings: StrictBool = False


@config_errors
@dataclass(config=CONFIG)
class GenerationDefaults:
    """How the model's replies are decoded when the caller does not say: by `sphinx-pipeline
    generate`, `chat` and `serve` (their options and a request's fields override these), and by
    evaluation (`task_max_new_tokens`). `generate()` in Python takes explicit options.

    `temperature` 0 decodes greedily; above 0 it samples from the fewest tokens holding `top_p`
    of the probability mass. A reply has at most `max_new_tokens` tokens; when evaluating a
    record whose `meta.task` is a key of `task_max_new_tokens`, at most that many (SPHINX: 10
    for short-answer VQA, 30 for REC)."""

    temperature: Annotated[Number, Field(ge=0)] = 0.0
    top_p: Annotated[Number, Field(gt=0, le=1)] = 1.0
    max_new_tokens: PositiveInt = 256
    task_max_new_tokens: dict[StrictStr, PositiveInt] = field(default_factory=dict)

    @classmethod
    def of(cls, config: ModelConfig | None) -> GenerationDefaults:
        """The defaults of a model's config; the plain ones (greedy) for a model without one
        (assembled from parts by hand)."""
        return cls() if config is None else config.generation

    def overridden(self, **given: Any) -> GenerationDefaults:
        """These defaults with the fields the user gave (None: not given), checked like any
        config: `overridden(temperature=None, top_p=0.9)`."""
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})


@config_errors
@dataclass(config=CONFIG)
class ModelConfig:
    """A whole multi-modal model. `placement`: `placeholder` puts each image's visual tokens at
    its run of image-token ids (as Hugging Face's LLaVA does); `prefix` puts them right after BOS
    (SPHINX); `after_question` after the text of their user message, so they see the question
    (see `SphinxProcessor`). `dtype` is the dtype every component is built in. `generation`: how
    its replies are decoded unless the caller says otherwise (configs saved before it existed
    get greedy)."""

    vision: VisionConfig
    llm: LLMConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    template: StrictStr = "sphinx"
    placement: Placement = "placeholder"
    dtype: Dtype = "float32"
    name: StrictStr = "custom"
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)

    # -- plain data ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from plain data, naming every unknown, missing or mistyped field by its path."""
        return validate(cls, data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ModelConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"Model config is not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"A model config is a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No model config file at {path}")
        try:
            return cls.from_yaml(path.read_text())
        except ConfigError as error:
            raise error.within(str(path)) from error

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied by dotted path: `replace(**{"llm.name": "tiny_qwen2"})`."""
        data = self.to_dict()
        for dotted, value in changes.items():
            set_path(data, dotted, value)
        return ModelConfig.from_dict(data)


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `data["a"]["b"]` for `dotted == "a.b"`; list items go by index
    (`vision.encoders.0.name`). A key through a value that is not a mapping, or an index past a
    list's end, is a `ConfigError` naming the setting."""
    *parents, last = dotted.split(".")
    node: Any = data
    for key in parents:
        node = (
            node[_index(node, key, dotted)] if isinstance(node, list) else node.setdefault(key, {})
        )
        if not isinstance(node, dict | list):
            raise ConfigError(f"{dotted}: {key} is {node!r}, which has no fields to set")
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    else:
        node[last] = value


def _index(items: list, key: str, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(
            f"{dotted}: {key!r} is not an index of a list of {len(items)} item(s) "
            f"(0 to {len(items) - 1})"
        )
    return int(key)


# -- pydantic's errors as one short line per problem ---------------------------------------------

# what a field of the wrong type expected, by pydantic error type
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "dataclass_type": "a mapping",
    "dataclass_exact_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "iterable_type": "a list",
    "path_type": "a path",
    "none_required": "null",
}
_MISSING = {
    "missing",
    "missing_argument",
    "missing_keyword_only_argument",
    "missing_positional_only_argument",
}
_UNKNOWN = {"extra_forbidden", "unexpected_keyword_argument"}
_IN_UNION = {"true or false": "a boolean"}
_SCALAR_TAGS = {"bool", "str", "int", "float", "none"}  # pydantic's names of union branches


def problems(error: ValidationError, root: Any) -> list[str]:
    """One line per problem of `error` (raised validating `root`), each naming its field path;
    the branches of a union that all refused a value make one problem."""
    lines: list[str | tuple[str, list[str], str]] = []  # a line, or a union's (path, ...)
    unions: dict[str, list[str]] = {}  # path -> what each union branch expected
    for item in error.errors(include_url=False):
        kind, loc = item["type"], item["loc"]
        if loc[-1:] == ("[key]",) or kind == "invalid_key":  # a mapping's key
            path = _walk(root, loc[: -2 if kind != "invalid_key" else -1])[0]
            lines.append(_line(path, f"keys must be strings, got {_show(item['input'])}"))
        elif kind == "unexpected_positional_argument":
            path = _walk(root, loc[:-1])[0]
            lines.append(_line(path, f"too many arguments: {_show(item['input'])} is left over"))
        elif kind in _UNKNOWN:
            path, parent, _ = _walk(root, loc[:-1])
            lines.append(_line(path, _unknown(str(loc[-1]), _fields(parent))))
        else:
            path, _, branch = _walk(root, loc)
            if not (branch and kind in _EXPECTED):
                lines.append(_line(path, _message(item)))
            elif path in unions:
                unions[path].append(_EXPECTED[kind])
            else:
                unions[path] = [_EXPECTED[kind]]
                lines.append((path, unions[path], _show(item["input"])))
    result: list[str] = []
    for line in lines:
        if isinstance(line, tuple):
            path, expected, got = line
            either = " or ".join(dict.fromkeys(_IN_UNION.get(e, e) for e in expected))
            line = _line(path, f"expected {either}, got {got}")
        if line not in result:
            result.append(line)
    return result


def _line(path: str, message: str) -> str:
    if not path:
        return message
    return f"{path} {message}" if message.startswith("must ") else f"{path}: {message}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown(name: str, fields: dict[str, Any] | None) -> str:
    known = list(fields or ())
    # the longest field that starts the name (`lrate`: `lr`, not the merely similar
    # `strategy`), else the closest one
    prefixes = sorted((k for k in known if len(k) > 1 and name.startswith(k)), key=len)
    hints = prefixes[-1:] or difflib.get_close_matches(name, known, n=1)
    if hints:
        return f"unknown field {name!r} (did you mean {hints[0]!r}?)"
    if 0 < len(known) <= 8:
        return f"unknown field {name!r} (fields: {', '.join(known)})"
    return f"unknown field {name!r}"


def _message(item: dict[str, Any]) -> str:
    kind, ctx, got = item["type"], item.get("ctx") or {}, _show(item["input"])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got}"
    if kind in _MISSING:
        return "field required"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, got {got}"
    if kind == "finite_number":
        return f"must be a finite number, got {got}"
    if kind == "greater_than":
        bound = ctx["gt"]
        return f"must be {'positive' if bound == 0 else f'greater than {bound}'}, got {got}"
    if kind == "greater_than_equal":
        bound = ctx["ge"]
        return f"must be {'>= 0' if bound == 0 else f'at least {bound}'}, got {got}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}, got {got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {got}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return (
            f"must have {'at least' if kind == 'too_short' else 'at most'} {bound} item(s), "
            f"got {ctx.get('actual_length')}"
        )
    message = item["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _walk(root: Any, loc: tuple[Any, ...]) -> tuple[str, Any, bool]:
    """The display path of `loc` under the type `root` (`vision.encoders[1].image_size`), the type
    found there (None where unknown), and whether `loc` ended in a union's branch."""
    kind, path, branch = root, "", False
    for key in loc:
        kind = _strip(kind)
        members = _members(kind)
        if members is not None:
            named = [m for m in members if getattr(m, "__name__", None) == key]
            if key in _SCALAR_TAGS or named:  # the union branch that refused the value
                kind, branch = (named[0] if named else None), True
                continue
            shaped = [m for m in members if _fields(m) is not None]
            kind = shaped[0] if len(shaped) == 1 else None
        fields = _fields(kind)
        if isinstance(key, int) and fields is not None:  # a positional argument
            key = list(fields)[key] if key < len(fields) else key
        if isinstance(key, int):
            path += f"[{key}]"
            kind = _item_type(kind, key)
        else:
            path = f"{path}.{key}" if path else str(key)
            kind = fields.get(key) if fields is not None else _item_type(kind, key)
        branch = False
    kind = _strip(kind)
    shaped = [m for m in _members(kind) or () if _fields(m) is not None]
    return path, shaped[0] if len(shaped) == 1 else kind, branch


def _strip(kind: Any) -> Any:
    """`kind` without `Annotated` metadata, and `X | None` as `X`."""
    while True:
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
            continue
        members = [m for m in get_args(kind) if m is not type(None)]
        if _is_union(kind) and len(members) == 1:
            kind = members[0]
            continue
        return kind


def _is_union(kind: Any) -> bool:
    return get_origin(kind) in (typing.Union, types.UnionType)


def _members(kind: Any) -> list[Any] | None:
    if not _is_union(kind):
        return None
    return [_strip(m) for m in get_args(kind) if m is not type(None)]


def _fields(kind: Any) -> dict[str, Any] | None:
    """Field name -> type of a pydantic dataclass or a TypedDict; None for anything else."""
    if isinstance(kind, type) and hasattr(kind, "__pydantic_fields__"):
        return {name: info.annotation for name, info in kind.__pydantic_fields__.items()}
    if typing_extensions.is_typeddict(kind):
        return typing.get_type_hints(kind)
    return None


def _item_type(kind: Any, key: Any) -> Any:
    origin, args = get_origin(kind), get_args(kind)
    if origin is tuple and args:
        return args[0] if args[-1] is Ellipsis or not isinstance(key, int) else args[key]
    if origin in (list, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None
