"""The registry of visual encoders (entry-point group `sphinx_mllm_encoders`) and `create_encoder`.

Every registered factory has the signature `factory(pretrained=None, *, device=None, dtype=None,
frozen=True, **overrides) -> VisualEncoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx_mllm.core import ComponentRegistry
from sphinx_mllm.encoders.base import VisualEncoder

ENCODERS = ComponentRegistry("encoders")


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a shell wildcard, e.g. `list_encoders("*dinov2*")`."""
    return ENCODERS.names(pattern)


def get_encoder(name: str) -> Any:
    """The factory registered as `name`; an unknown name raises with the close matches."""
    return ENCODERS.get(name)


def create_encoder(
    name: str, pretrained: str | Path | bool | None = None, **overrides: Any
) -> VisualEncoder:
    """Build the encoder registered as `name`.

    `pretrained`: None for random weights; True for the preset's default source; a library source
    (an open_clip tag, a timm tag, a Hugging Face id); or a local file or directory. `overrides`
    go to the factory: `device`, `dtype`, `frozen`, and the family's options.
    """
    encoder = get_encoder(name)(pretrained, **overrides)
    if not isinstance(encoder, VisualEncoder):
        raise TypeError(
            f"Encoder factory {name!r} returned {type(encoder).__name__}, not a VisualEncoder"
        )
    return encoder
