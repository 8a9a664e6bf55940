"""Visual encoder adapters for SPHINX-style MLLMs; usable without other sphinx packages.

The adapters (open_clip, timm, transformers) import their library only when an encoder of theirs
is built, so importing this package and listing encoders stays light.
"""

from sphinx_mllm.encoders.base import EncoderOutput, VisualEncoder
from sphinx_mllm.encoders.registry import ENCODERS, create_encoder, get_encoder, list_encoders
from sphinx_mllm.encoders.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    clip_to_imagenet,
    renormalize,
)
from sphinx_mllm.encoders.weights import WeightsMismatchError

__all__ = [
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "EncoderOutput",
    "ImageTransform",
    "VisualEncoder",
    "WeightsMismatchError",
    "clip_to_imagenet",
    "create_encoder",
    "get_encoder",
    "list_encoders",
    "renormalize",
]
