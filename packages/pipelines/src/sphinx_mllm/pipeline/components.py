"""Every component registry of the toolkit in one place, for listing and inspection."""

from __future__ import annotations

from sphinx_mllm.core import ComponentInfo, ComponentRegistry, PluginLoadError
from sphinx_mllm.data.registry import CHAT_TEMPLATES, TASK_BUILDERS
from sphinx_mllm.encoders.registry import ENCODERS
from sphinx_mllm.llm.language_models import LANGUAGE_MODELS
from sphinx_mllm.llm.registry import MERGE_METHODS
from sphinx_mllm.mixer.registry import MIXERS, PROJECTORS, VIEW_SPLITTERS
from sphinx_mllm.pipeline.registry import MODEL_PRESETS

ALL_REGISTRIES: dict[str, ComponentRegistry] = {
    registry.kind: registry
    for registry in (
        ENCODERS,
        MIXERS,
        PROJECTORS,
        VIEW_SPLITTERS,
        MERGE_METHODS,
        LANGUAGE_MODELS,
        TASK_BUILDERS,
        CHAT_TEMPLATES,
        MODEL_PRESETS,
    )
}


def registry_for(kind: str) -> ComponentRegistry:
    """The registry of one kind; an unknown kind names the known ones."""
    if kind not in ALL_REGISTRIES:
        raise ValueError(
            f"Unknown component kind {kind!r}; expected one of {sorted(ALL_REGISTRIES)}"
        )
    return ALL_REGISTRIES[kind]


def describe_components(
    pattern: str = "*", kinds: list[str] | None = None
) -> tuple[list[ComponentInfo], list[PluginLoadError]]:
    """Provenance of every component matching `pattern`, and the plugins skipped while listing."""
    registries = [registry_for(kind) for kind in kinds] if kinds else list(ALL_REGISTRIES.values())
    infos = [registry.info(name) for registry in registries for name in registry.names(pattern)]
    errors = [error for registry in registries for error in registry.load_errors]
    return infos, errors
