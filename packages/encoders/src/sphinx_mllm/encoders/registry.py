"""The registry of visual encoders (entry-point group `sphinx_mllm_encoders`)."""

from typing import Any

from sphinx_mllm.core import ComponentRegistry

ENCODERS = ComponentRegistry("encoders")


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a shell wildcard, e.g. `list_encoders("*dinov2*")`."""
    return ENCODERS.names(pattern)


def get_encoder(name: str) -> Any:
    """The factory registered as `name`; an unknown name raises with the close matches."""
    return ENCODERS.get(name)
