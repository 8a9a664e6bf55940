"""Compose SPHINX-style multi-modal LLMs from the sphinx packages; the `sphinx-pipeline` command.

Model-building names (`build_model`, `SphinxModel`, `describe`, ...) import torch on first use,
so listing components stays light.
"""

from typing import Any

from sphinx_mllm.pipeline.components import ALL_REGISTRIES, describe_components, registry_for
from sphinx_mllm.pipeline.config import (
    ConfigError,
    EncoderSpec,
    LLMConfig,
    ModelConfig,
    TokenizerConfig,
    VisionConfig,
)
from sphinx_mllm.pipeline.registry import MODEL_PRESETS, get_model_preset, list_model_presets

_LAZY = {
    "build_model": "sphinx_mllm.pipeline.building",
    "SphinxModel": "sphinx_mllm.pipeline.model",
    "SphinxOutput": "sphinx_mllm.pipeline.model",
    "describe": "sphinx_mllm.pipeline.description",
    "apply_stage": "sphinx_mllm.pipeline.stages",
    "Stage": "sphinx_mllm.pipeline.stages",
}

__all__ = [
    "ALL_REGISTRIES",
    "MODEL_PRESETS",
    "ConfigError",
    "EncoderSpec",
    "LLMConfig",
    "ModelConfig",
    "TokenizerConfig",
    "VisionConfig",
    "describe_components",
    "get_model_preset",
    "list_model_presets",
    "registry_for",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sphinx_mllm.pipeline' has no attribute {name!r}")
