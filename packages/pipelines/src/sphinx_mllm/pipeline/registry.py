"""The registry of model presets (entry-point group `sphinx_mllm_model_presets`)."""

from typing import Any

from sphinx_mllm.core import ComponentRegistry

MODEL_PRESETS = ComponentRegistry("model_presets")


def list_model_presets(pattern: str = "*") -> list[str]:
    """Registered model-preset names matching a shell wildcard, e.g. `"sphinx*"`."""
    return MODEL_PRESETS.names(pattern)


def get_model_preset(name: str) -> Any:
    """The model preset registered as `name`; an unknown name raises with the close matches."""
    return MODEL_PRESETS.get(name)
