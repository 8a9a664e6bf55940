"""Synthetic multi-task source data for the CPU demo and for tests: scenes of coloured shapes
(detection, captions, VQA), stick figures (pose) and page layouts, generated from a seed with no
download and written in the real public formats (COCO, PubLayNet, VQAv2), so the same readers
and task builders read them as read the real sets.

    from sphinx_mllm.data.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset("demo_data", seed=0, num_train=200, num_val=50)
    print(manifest["splits"]["train"]["counts"])  # shape scenes, objects, figures, pages, ...
"""

from sphinx_mllm.data.synthetic.captions import caption_scene
from sphinx_mllm.data.synthetic.coco import (
    LAYOUT_CATEGORY_LIST,
    PERSON_CATEGORY,
    SHAPE_CATEGORIES,
    SHAPE_CATEGORY_IDS,
)
from sphinx_mllm.data.synthetic.colours import COLOURS
from sphinx_mllm.data.synthetic.export import IMAGE_FILE_PATTERN, write_synthetic_dataset
from sphinx_mllm.data.synthetic.figures import (
    KEYPOINT_NAMES,
    SKELETON,
    StickFigure,
    make_stick_figure,
)
from sphinx_mllm.data.synthetic.pages import LAYOUT_CATEGORIES, LayoutBlock, Page, make_page
from sphinx_mllm.data.synthetic.questions import Question, make_questions
from sphinx_mllm.data.synthetic.shapes import SHAPES, ShapeObject, ShapeScene, make_shape_scene
from sphinx_mllm.data.synthetic.streams import image_id, item_rng

__all__ = [
    "COLOURS",
    "IMAGE_FILE_PATTERN",
    "KEYPOINT_NAMES",
    "LAYOUT_CATEGORIES",
    "LAYOUT_CATEGORY_LIST",
    "PERSON_CATEGORY",
    "SHAPES",
    "SHAPE_CATEGORIES",
    "SHAPE_CATEGORY_IDS",
    "SKELETON",
    "LayoutBlock",
    "Page",
    "Question",
    "ShapeObject",
    "ShapeScene",
    "StickFigure",
    "caption_scene",
    "image_id",
    "item_rng",
    "make_page",
    "make_questions",
    "make_shape_scene",
    "make_stick_figure",
    "write_synthetic_dataset",
]
