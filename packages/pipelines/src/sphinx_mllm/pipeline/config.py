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
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PLACEMENTS = ("placeholder", "prefix")
DTYPES = ("float32", "bfloat16", "float16")
Placement = Literal["placeholder", "prefix"]


class ConfigError(ValueError):
    """A model config that does not describe a model: names the field and what was expected."""


@dataclass
class EncoderSpec:
    """One encoder of the visual stack: its registry name, the factory's arguments (`pretrained`,
    `feature_layer`, ...), and the side and interpolation the views are fed to it at (default:
    the encoder's own input size)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    resize: str = "bicubic"


@dataclass
class VisionConfig:
    """The visual stack: a view splitter, one or more encoders, and a mixer (whose options name
    its projectors)."""

    encoders: list[EncoderSpec]
    splitter: str = "single"
    splitter_options: dict[str, Any] = field(default_factory=dict)
    mixer: str = "channel_concat"
    mixer_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LLMConfig:
    """The language model: a sphinx-llm preset, a local model directory or a hub id, with config
    overrides (`num_hidden_layers: 2`, ...) and where its weights come from (`load_llm`); or,
    when `config` is given, the architecture that whole transformers config (with its
    `model_type`) describes, random-initialised (an imported model's LLM; `name` is then only
    a label)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: bool | str | None = None
    config: dict[str, Any] | None = None


@dataclass
class TokenizerConfig:
    """Where the tokenizer comes from: `source` is a tokenizer directory or hub id, `"llm"` for
    the language model's own, or `"demo"` for the byte-level BPE shipped with sphinx-pipeline.
    `image_token` is added as a special token when the tokenizer lacks it; `image_token_id`
    fixes its id (needed only when there is no tokenizer and ids are made by hand)."""

    source: str = "llm"
    image_token: str = "<image>"
    image_token_id: int | None = None
    pad_token: str | None = None


@dataclass
class ModelConfig:
    """A whole multi-modal model. `placement`: `placeholder` puts each image's visual tokens at
    its run of image-token ids (as Hugging Face's LLaVA does); `prefix` puts them right after BOS
    (SPHINX). `dtype` is the dtype every component is built in."""

    vision: VisionConfig
    llm: LLMConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    template: str = "sphinx"
    placement: Placement = "placeholder"
    dtype: str = "float32"
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.vision.encoders:
            raise ConfigError("vision.encoders is empty: a model needs at least one encoder")

    # -- plain data ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from plain data, naming any unknown or missing field with its path."""
        return _build(cls, data, "config")

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
            raise ConfigError(f"{path}: {error}") from error

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


def _build(cls: type, data: Any, where: str) -> Any:
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping for {cls.__name__}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints = {m for key in unknown for m in difflib.get_close_matches(key, fields)}
        hint = f" (did you mean {', '.join(sorted(hints))}?)" if hints else ""
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}{hint}; {cls.__name__} has "
            f"{', '.join(fields)}"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    values = {}
    for name, value in data.items():
        nested = _NESTED.get((cls.__name__, name))
        if nested is EncoderSpec:
            if not isinstance(value, list):
                raise ConfigError(f"{where}.{name} must be a list of encoders, got {value!r}")
            value = [
                _build(
                    EncoderSpec,
                    {"name": item} if isinstance(item, str) else item,
                    f"{where}.{name}.{i}",
                )
                for i, item in enumerate(value)
            ]
        elif nested is not None:
            value = _build(nested, value, f"{where}.{name}")
        else:
            _check_type(value, fields[name].type, f"{where}.{name}")
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


# the Python types each leaf annotation of the config classes admits (a bool is no int here)
_LEAF_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "Placement": (str,),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "bool | str | None": (bool, str, type(None)),
    "dict[str, Any]": (dict,),
    "dict[str, Any] | None": (dict, type(None)),
}


def _check_type(value: Any, annotation: str, where: str) -> None:
    allowed = _LEAF_TYPES[annotation]
    if isinstance(value, bool) and bool not in allowed:
        allowed = ()
    if not isinstance(value, allowed):
        raise ConfigError(f"{where} must be {annotation}, got {value!r}")
    if isinstance(value, dict) and not all(isinstance(key, str) for key in value):
        raise ConfigError(f"{where}: every key must be a string, got {list(value)!r}")


_NESTED: dict[tuple[str, str], type] = {
    ("ModelConfig", "vision"): VisionConfig,
    ("ModelConfig", "llm"): LLMConfig,
    ("ModelConfig", "tokenizer"): TokenizerConfig,
    ("VisionConfig", "encoders"): EncoderSpec,
}
