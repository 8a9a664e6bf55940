"""The registry of language model presets (entry-point group `sphinx_mllm_language_models`).

Every registered preset is a factory taking no argument and returning a transformers config
(`LlamaConfig`, `MistralConfig`, `Qwen2Config`, `MixtralConfig`); `load_llm` builds the model.
"""

from typing import Any

from sphinx_mllm.core import ComponentRegistry

LANGUAGE_MODELS = ComponentRegistry("language_models")


def list_language_models(pattern: str = "*") -> list[str]:
    """Registered language model presets matching a shell wildcard, e.g. `"tiny_*"`."""
    return LANGUAGE_MODELS.names(pattern)


def get_language_model(name: str) -> Any:
    """The config factory registered as `name`; an unknown name raises with the close matches."""
    return LANGUAGE_MODELS.get(name)
