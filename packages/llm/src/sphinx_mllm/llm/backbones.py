"""`load_llm`: a Hugging Face causal LM (Llama-2, Mistral, Qwen2, TinyLlama, Mixtral) and its
tokenizer, from a registered preset, a local model directory, or a Hugging Face hub id.

The model is built directly in the requested dtype on the requested device, so no fp32 copy is
made first and real-size presets build on the `meta` device in a second. Weights are read only
from safetensors (never pickle), through transformers' `from_pretrained`.
"""

from __future__ import annotations

import difflib
import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import is_accelerate_available

from sphinx_mllm.llm.language_models import LANGUAGE_MODELS, get_language_model

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "mixtral")  # config.model_type
DEFAULT_ATTENTION = "sdpa"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Pretrained = bool | str | Path | None


@dataclass(frozen=True)
class _Architecture:
    """A resolved `name_or_path`: its config, and where its weights are when it has some."""

    config: PreTrainedConfig
    weights: str | None  # a directory or a hub id
    loads_weights_by_default: bool  # directories and hub ids do; presets build random weights


def load_llm(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    pretrained: Pretrained = None,
    **overrides: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """A causal LM in eval mode and its tokenizer (None when there is none to load offline).

    `name_or_path`: a preset (`list_language_models()`), a local directory (config.json and
    *.safetensors), or a hub id (needs the network or a cached copy). `pretrained`: None loads
    the weights of a directory or hub id and random-initialises a preset; False always
    random-initialises; True loads the preset's own repository; a directory or hub id loads
    weights from there. `dtype`: None keeps a checkpoint's dtype and uses torch's default for
    random weights. `device="meta"` builds the architecture only. `overrides`: config fields
    (`num_hidden_layers=2`, ...) and `attn_implementation` (default "sdpa").
    """
    attn_implementation = overrides.pop("attn_implementation", DEFAULT_ATTENTION)
    architecture = _resolve(str(name_or_path))
    config = _with_overrides(architecture.config, overrides, name_or_path)
    if config.model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"{name_or_path!r} is a {config.model_type!r} model; supported families (config "
            f"model_type): {', '.join(SUPPORTED_FAMILIES)}"
        )
    weights = _weights_to_load(architecture, pretrained, name_or_path)
    if weights is None:
        with torch.device(device) if device is not None else nullcontext():
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )
        return model.eval(), None
    if device is not None and torch.device(device).type == "meta":
        raise ValueError(
            f"Weights for {name_or_path!r} cannot be loaded onto the meta device; pass "
            "pretrained=False to build the architecture only"
        )
    with _hub_errors(weights):
        model = _from_pretrained(weights, config, dtype, device, attn_implementation)
        return model.eval(), _tokenizer(weights)


def _resolve(name: str) -> _Architecture:
    path = Path(name).expanduser()
    if name not in LANGUAGE_MODELS:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"No config.json in {path}: not a model directory")
            return _Architecture(AutoConfig.from_pretrained(path), str(path), True)
        if path.exists() or name.startswith((".", "/", "~")):
            raise FileNotFoundError(f"No model directory at {path} (expected config.json there)")
        if _HUB_ID.match(name):
            with _hub_errors(name):
                return _Architecture(AutoConfig.from_pretrained(name), name, True)
    config = get_language_model(name)()  # an unknown name raises, listing the close matches
    if not isinstance(config, PreTrainedConfig):
        raise TypeError(
            f"Language model preset {name!r} returned {type(config).__name__}, not a "
            "transformers config"
        )
    return _Architecture(config, config.name_or_path or None, loads_weights_by_default=False)


def _with_overrides(
    config: PreTrainedConfig, overrides: dict[str, Any], name: str | Path
) -> PreTrainedConfig:
    """The config rebuilt with `overrides`. Setting attributes afterwards would leave fields that
    the constructor derives from others stale (Llama's `head_dim` from the width, Qwen2's
    `layer_types` from the depth), so those are dropped and derived again."""
    if not overrides:
        return config
    settings = config.to_dict()
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        close = {match for key in unknown for match in difflib.get_close_matches(key, settings)}
        hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
        fields = ", ".join(unknown)
        raise TypeError(f"{name!r}: {type(config).__name__} has no field {fields}{hint}")
    config_class = type(config)

    def derived(key: str) -> bool:
        rest = {other: value for other, value in settings.items() if other != key}
        return getattr(config_class.from_dict(rest), key, None) == settings[key]

    kept = {key: value for key, value in settings.items() if key in overrides or not derived(key)}
    rebuilt = config_class.from_dict({**kept, **overrides})
    rebuilt.name_or_path = config.name_or_path
    return rebuilt


def _weights_to_load(
    architecture: _Architecture, pretrained: Pretrained, name: str | Path
) -> str | None:
    if pretrained is None:
        return architecture.weights if architecture.loads_weights_by_default else None
    if pretrained is False:
        return None
    if pretrained is True:
        if architecture.weights is None:
            raise ValueError(
                f"{name!r} has no pretrained weights of its own; pass pretrained=<a model "
                "directory or hub id>"
            )
        return architecture.weights
    source = Path(pretrained).expanduser()
    if source.exists() or not _HUB_ID.match(str(pretrained)):
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"No Hugging Face model directory (config.json) at {source}")
        return str(source)
    return str(pretrained)


def _from_pretrained(
    weights: str,
    config: PreTrainedConfig,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    attn_implementation: str,
) -> PreTrainedModel:
    directory = Path(weights)
    if directory.is_dir() and not any(directory.glob("*.safetensors")):
        found = ", ".join(sorted(path.name for path in directory.iterdir()))
        raise FileNotFoundError(
            f"No *.safetensors weights in {directory} (found: {found}); pickled checkpoints are "
            "not loaded: convert them to safetensors"
        )
    options: dict[str, Any] = {}
    target = torch.device(device) if device is not None else torch.device("cpu")
    if target.type != "cpu" and is_accelerate_available():
        options["device_map"] = target  # transformers places weights on `target` as it reads
    model = AutoModelForCausalLM.from_pretrained(
        weights,
        config=config,
        dtype=dtype if dtype is not None else "auto",
        attn_implementation=attn_implementation,
        use_safetensors=True,
        **options,
    )
    # Without accelerate, transformers refuses any device but the CPU while loading; move after.
    return model if "device_map" in options else model.to(target)


def _tokenizer(weights: str) -> PreTrainedTokenizerBase | None:
    directory = Path(weights)
    if directory.is_dir() and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(weights)


@contextmanager
def _hub_errors(source: str):
    """Turn a failed hub download into an error that says what to do instead."""
    try:
        yield
    except OSError as error:
        if Path(source).expanduser().exists():
            raise
        offline = any(
            os.environ.get(flag, "").upper() in ("1", "ON", "YES", "TRUE")
            for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        )
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else str(error).splitlines()[0]
        raise OSError(
            f"Could not load {source!r} from the Hugging Face hub: {why}. It is neither a "
            "registered language model preset (list_language_models()) nor a local directory. "
            "Without a network or a cached copy, download it elsewhere and pass the local model "
            "directory (config.json and *.safetensors) instead."
        ) from error
