"""Readers of the public annotation formats: streaming, validating, naming file and record."""

from sphinx_mllm.data.readers.coco import CocoFile, CocoImage, CocoObject, layout_category_names
from sphinx_mllm.data.readers.flickr30k import read_flickr30k_entities
from sphinx_mllm.data.readers.json_stream import (
    AnnotationFormatError,
    iter_array,
    iter_arrays,
    iter_top_level,
)
from sphinx_mllm.data.readers.llava import read_llava
from sphinx_mllm.data.readers.problems import Problems
from sphinx_mllm.data.readers.refcoco import read_refs_export, read_refs_pickle
from sphinx_mllm.data.readers.visual_genome import read_region_descriptions
from sphinx_mllm.data.readers.vqa import read_aokvqa, read_gqa, read_textvqa, read_vqav2

__all__ = [
    "AnnotationFormatError",
    "CocoFile",
    "CocoImage",
    "CocoObject",
    "Problems",
    "iter_array",
    "iter_arrays",
    "iter_top_level",
    "layout_category_names",
    "read_aokvqa",
    "read_flickr30k_entities",
    "read_gqa",
    "read_llava",
    "read_refs_export",
    "read_refs_pickle",
    "read_region_descriptions",
    "read_textvqa",
    "read_vqav2",
]
