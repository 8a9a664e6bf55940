"""Build a `SphinxModel` from a `ModelConfig` (or a preset name): each component from its
registry, directly in the config's dtype on the requested device (`device="meta"` builds a
real-size model in seconds without memory). `components` swaps in Python objects instead:
`{"llm": model, "tokenizer": tok, "encoders": [enc, ...], "mixer": mixer, "visual": stack}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from sphinx_mllm.data.registry import get_chat_template
from sphinx_mllm.encoders import create_encoder
from sphinx_mllm.mixer import EncoderStream, VisualStack
from sphinx_mllm.pipeline.config import ConfigError, ModelConfig
from sphinx_mllm.pipeline.model import SphinxModel
from sphinx_mllm.pipeline.tokenizers import load_tokenizer, resolve_image_token_id

COMPONENT_KEYS = ("visual", "llm", "tokenizer", "encoders", "mixer")


def resolve_config(config: ModelConfig | str | dict[str, Any]) -> ModelConfig:
    """A config object from a config, a preset name, a YAML path or plain data."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, dict):
        return ModelConfig.from_dict(config)
    if isinstance(config, str) and config.endswith((".yaml", ".yml")):
        return ModelConfig.load(config)
    from sphinx_mllm.pipeline.registry import get_model_preset

    preset = get_model_preset(config)()  # unknown names raise with the close matches
    if not isinstance(preset, ModelConfig):
        raise TypeError(
            f"Model preset {config!r} returned {type(preset).__name__}, not ModelConfig"
        )
    return preset


def build_model(
    config: ModelConfig | str | dict[str, Any],
    *,
    device: torch.device | str | None = None,
    components: dict[str, Any] | None = None,
    **changes: Any,
) -> SphinxModel:
    """The model `config` describes. `changes` override config fields by dotted path
    (`build_model("demo", **{"llm.overrides.num_hidden_layers": 2})`)."""
    config = resolve_config(config)
    if changes:
        config = config.replace(**changes)
    components = dict(components or {})
    unknown = sorted(set(components) - set(COMPONENT_KEYS))
    if unknown:
        raise ValueError(f"Unknown component key(s) {unknown}; expected some of {COMPONENT_KEYS}")
    dtype = getattr(torch, config.dtype)
    llm, llm_tokenizer = components.get("llm"), None
    if llm is None:
        with _naming("llm", config.llm.name):
            llm, llm_tokenizer = build_llm(config, dtype=dtype, device=device)
    tokenizer = components.get("tokenizer") or load_tokenizer(config.tokenizer, llm_tokenizer)
    width = llm.get_input_embeddings().embedding_dim
    visual = components.get("visual")
    if visual is None:
        with _naming("vision", ", ".join(spec.name for spec in config.vision.encoders)):
            visual = build_visual_stack(
                config, width, device=device, dtype=dtype, components=components
            )
    return SphinxModel(
        visual,
        llm,
        image_token_id=resolve_image_token_id(
            config.tokenizer, tokenizer, llm.get_input_embeddings().num_embeddings
        ),
        placement=config.placement,
        config=config,
        tokenizer=tokenizer,
        template=get_chat_template(config.template),
    )


@contextmanager
def _naming(part: str, name: str) -> Iterator[None]:
    """Report a component that its own library refuses to build from the config's values (a
    wrong type, an impossible size) as a `ConfigError` naming the config section."""
    from huggingface_hub.errors import StrictDataclassError  # transformers' config validation

    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ConfigError(f"{part} ({name}) cannot be built from the config: {error}") from error


def build_llm(
    config: ModelConfig, *, dtype: torch.dtype, device: torch.device | str | None
) -> tuple[Any, Any]:
    """The causal LM of `config.llm` and its own tokenizer (None when it has none)."""
    spec = config.llm
    if spec.config is None:
        from sphinx_mllm.llm import load_llm

        return load_llm(
            spec.name, dtype=dtype, device=device, pretrained=spec.pretrained, **spec.overrides
        )
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {**spec.config, **spec.overrides}
    if "model_type" not in settings:
        raise ConfigError("llm.config must hold the transformers model_type of the LLM")
    architecture = AutoConfig.for_model(**settings)
    with torch.device(device) if device is not None else nullcontext():
        model = AutoModelForCausalLM.from_config(
            architecture, dtype=dtype, attn_implementation="sdpa"
        )
    return model.eval(), None


def build_visual_stack(
    config: ModelConfig,
    out_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    components: dict[str, Any] | None = None,
) -> VisualStack:
    """The splitter, encoders and mixer of `config.vision`, mixing to width `out_dim`."""
    vision = config.vision
    given = (components or {}).get("encoders")
    if given is not None and len(given) != len(vision.encoders):
        raise ConfigError(
            f"components['encoders'] holds {len(given)} encoder(s), the config names "
            f"{len(vision.encoders)}: {[spec.name for spec in vision.encoders]}"
        )
    streams = []
    for index, spec in enumerate(vision.encoders):
        encoder = (
            given[index]
            if given is not None
            else create_encoder(spec.name, device=device, dtype=dtype, **spec.options)
        )
        streams.append(EncoderStream(encoder, image_size=spec.image_size, resize=spec.resize))
    mixer = (components or {}).get("mixer") or vision.mixer
    return VisualStack(
        vision.splitter,
        streams,
        mixer,
        out_dim=out_dim,
        splitter_options=vision.splitter_options,
        mixer_options=vision.mixer_options,
        device=device,
        dtype=dtype,
    )
