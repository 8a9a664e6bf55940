"""Token-level mixing of visual embeddings from several encoders, at several scales."""

from sphinx_mllm.mixer.projectors import Projector, create_projector
from sphinx_mllm.mixer.registry import (
    MIXERS,
    PROJECTORS,
    VIEW_SPLITTERS,
    get_mixer,
    get_projector,
    get_view_splitter,
    list_mixers,
    list_projectors,
    list_view_splitters,
)

__all__ = [
    "MIXERS",
    "PROJECTORS",
    "VIEW_SPLITTERS",
    "Projector",
    "create_projector",
    "get_mixer",
    "get_projector",
    "get_view_splitter",
    "list_mixers",
    "list_projectors",
    "list_view_splitters",
]
