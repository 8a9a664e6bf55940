"""Token-level mixing of visual embeddings from several encoders, at several scales: view
splitters, grid alignment, mixers, projectors, and the visual stack that composes them."""

from sphinx_mllm.mixer.alignment import ALIGN_METHODS, align_grid
from sphinx_mllm.mixer.mixing import Mixer, StreamSpec
from sphinx_mllm.mixer.projectors import Projector, create_projector
from sphinx_mllm.mixer.recipes import SPHINX_STACKS, StackRecipe, build_stack, sphinx_visual_stack
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
from sphinx_mllm.mixer.splitters import ViewSplitter
from sphinx_mllm.mixer.stack import EncoderStream, Segment, VisualStack, VisualTokens
from sphinx_mllm.mixer.views import View, ViewLayout, padded_resize

__all__ = [
    "ALIGN_METHODS",
    "MIXERS",
    "PROJECTORS",
    "SPHINX_STACKS",
    "VIEW_SPLITTERS",
    "EncoderStream",
    "Mixer",
    "Projector",
    "Segment",
    "StackRecipe",
    "StreamSpec",
    "View",
    "ViewLayout",
    "ViewSplitter",
    "VisualStack",
    "VisualTokens",
    "align_grid",
    "build_stack",
    "create_projector",
    "get_mixer",
    "get_projector",
    "get_view_splitter",
    "list_mixers",
    "list_projectors",
    "list_view_splitters",
    "padded_resize",
    "sphinx_visual_stack",
]
