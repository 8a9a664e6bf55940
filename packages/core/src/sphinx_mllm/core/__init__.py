"""Plumbing shared by the sphinx packages, with no torch: the entry-point component registries."""

from sphinx_mllm.core.registry import (
    NAMESPACE,
    ComponentInfo,
    ComponentRegistry,
    PluginImportError,
    PluginLoadError,
    PluginLoadWarning,
    UnknownComponentError,
)

__all__ = [
    "NAMESPACE",
    "ComponentInfo",
    "ComponentRegistry",
    "PluginImportError",
    "PluginLoadError",
    "PluginLoadWarning",
    "UnknownComponentError",
]
