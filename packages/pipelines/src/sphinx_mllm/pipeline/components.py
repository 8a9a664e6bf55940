"""Every component registry of the toolkit in one place, for listing and inspection."""

from __future__ import annotations

import difflib

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


# The kind names `sphinx-pipeline list` and `components --kind` take (either command also takes
# the registry's own kind, e.g. view_splitters), and the registry kind of each
KIND_NAMES = {
    "encoders": "encoders",
    "mixers": "mixers",
    "projectors": "projectors",
    "splitters": "view_splitters",
    "mergers": "merge_methods",
    "llms": "language_models",
    "tasks": "task_builders",
    "templates": "chat_templates",
    "presets": "model_presets",
}
SHORT_NAMES = {kind: name for name, kind in KIND_NAMES.items()}


def registry_for(kind: str) -> ComponentRegistry:
    """The registry of one kind (a short name such as `splitters`, or the registry's kind such
    as `view_splitters`); an unknown kind names the known ones."""
    found = ALL_REGISTRIES.get(KIND_NAMES.get(kind, kind))
    if found is None:
        close = difflib.get_close_matches(kind, list(dict.fromkeys([*KIND_NAMES, *ALL_REGISTRIES])))
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"Unknown component kind {kind!r}{hint}; expected one of {', '.join(KIND_NAMES)}"
        )
    return found


def describe_components(
    pattern: str = "*", kinds: list[str] | None = None
) -> tuple[list[ComponentInfo], list[PluginLoadError]]:
    """Provenance of every component matching `pattern`, and the plugins skipped while listing."""
    registries = [registry_for(kind) for kind in kinds] if kinds else list(ALL_REGISTRIES.values())
    infos = [registry.info(name) for registry in registries for name in registry.names(pattern)]
    errors = [error for registry in registries for error in registry.load_errors]
    return infos, errors
