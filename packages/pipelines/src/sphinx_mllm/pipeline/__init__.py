"""Compose SPHINX-style multi-modal LLMs from the sphinx packages; the `sphinx-pipeline` command."""

from sphinx_mllm.pipeline.components import ALL_REGISTRIES, describe_components, registry_for
from sphinx_mllm.pipeline.registry import MODEL_PRESETS, get_model_preset, list_model_presets

__all__ = [
    "ALL_REGISTRIES",
    "MODEL_PRESETS",
    "describe_components",
    "get_model_preset",
    "list_model_presets",
    "registry_for",
]
