"""The registries of the mixer package: mixers, projectors and view splitters (entry-point groups
`sphinx_mllm_mixers`, `sphinx_mllm_projectors`, `sphinx_mllm_view_splitters`)."""

from typing import Any

from sphinx_mllm.core import ComponentRegistry

MIXERS = ComponentRegistry("mixers")
PROJECTORS = ComponentRegistry("projectors")
VIEW_SPLITTERS = ComponentRegistry("view_splitters")


def list_mixers(pattern: str = "*") -> list[str]:
    """Registered mixer names matching a shell wildcard."""
    return MIXERS.names(pattern)


def get_mixer(name: str) -> Any:
    """The mixer factory registered as `name`; an unknown name raises with the close matches."""
    return MIXERS.get(name)


def list_projectors(pattern: str = "*") -> list[str]:
    """Registered projector names matching a shell wildcard, e.g. `list_projectors("linear*")`."""
    return PROJECTORS.names(pattern)


def get_projector(name: str) -> Any:
    """The projector factory registered as `name`; an unknown name raises with the close matches."""
    return PROJECTORS.get(name)


def list_view_splitters(pattern: str = "*") -> list[str]:
    """Registered view-splitter names matching a shell wildcard."""
    return VIEW_SPLITTERS.names(pattern)


def get_view_splitter(name: str) -> Any:
    """The view splitter registered as `name`; an unknown name raises with the close matches."""
    return VIEW_SPLITTERS.get(name)
