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
from sphinx_mllm.pipeline.processor import SphinxProcessor
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
    resize_embeddings: bool = False,
    **changes: Any,
) -> SphinxModel:
    """The model `config` describes. `changes` override config fields by dotted path
    (`build_model("demo", **{"llm.overrides.num_hidden_layers": 2})`). A tokenizer whose ids do
    not all fit the LLM's embedding table is an error, unless `resize_embeddings` (or the
    config's `tokenizer.resize_embeddings`) grows the table (new rows initialised by
    transformers' `resize_token_embeddings`)."""
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
    image_token_id = resolve_image_token_id(
        config.tokenizer, tokenizer, llm.get_input_embeddings().num_embeddings
    )
    if tokenizer is not None:
        resize = resize_embeddings or config.tokenizer.resize_embeddings
        fit_embeddings(llm, tokenizer, image_token_id, resize=resize)
    return SphinxModel(
        visual,
        llm,
        image_token_id=image_token_id,
        config=config,
        processor=build_processor(config, visual, tokenizer, image_token_id),
    )


def build_processor(
    config: ModelConfig, visual: VisualStack, tokenizer: Any, image_token_id: int
) -> SphinxProcessor:
    """The processor of a model built from `config` around the visual stack `visual`."""
    return SphinxProcessor(
        tokenizer,
        get_chat_template(config.template),
        visual.splitter,
        tokens_per_view={kind: visual.mixer.num_tokens(kind) for kind in ("global", "tile")},
        image_token_id=image_token_id,
        placement=config.placement,
        splitter_spec=(config.vision.splitter, dict(config.vision.splitter_options)),
    )


def fit_embeddings(llm: Any, tokenizer: Any, image_token_id: int, *, resize: bool) -> None:
    """Check that every id the tokenizer gives text (all but the image token, whose positions
    are overwritten by visual tokens) has a row in the LLM's embedding table; `resize` grows the
    table instead of refusing."""
    rows = llm.get_input_embeddings().num_embeddings
    text_ids = [i for i in tokenizer.get_vocab().values() if i != image_token_id]
    needed = max(text_ids, default=-1) + 1
    if needed <= rows:
        return
    if not resize:
        raise ConfigError(
            f"The tokenizer has {len(tokenizer)} tokens (text ids up to {needed - 1}) but the "
            f"LLM's embedding table has {rows} rows: set llm.overrides.vocab_size to at least "
            f"{needed}, or set tokenizer.resize_embeddings: true to grow the table"
        )
    llm.resize_token_embeddings(needed)


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
        streams.append(
            EncoderStream(
                encoder,
                image_size=spec.image_size,
                resize=spec.resize,
                half_precision_resize=spec.half_precision_resize,
                resample_from=spec.resample_from,
            )
        )
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
