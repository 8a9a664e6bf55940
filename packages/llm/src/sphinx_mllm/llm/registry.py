"""The registry of weight-merging methods (entry-point group `sphinx_mllm_merge_methods`)."""

from typing import Any

from sphinx_mllm.core import ComponentRegistry

MERGE_METHODS = ComponentRegistry("merge_methods")


def list_merge_methods(pattern: str = "*") -> list[str]:
    """Registered merge-method names matching a shell wildcard, e.g. `"dare*"`."""
    return MERGE_METHODS.names(pattern)


def get_merge_method(name: str) -> Any:
    """The merge method registered as `name`; an unknown name raises with the close matches."""
    return MERGE_METHODS.get(name)
