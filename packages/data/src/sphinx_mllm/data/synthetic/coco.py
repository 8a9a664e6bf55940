"""Synthetic items as records of the public formats: COCO instances, captions and person
keypoints, PubLayNet's COCO-style layout, and VQAv2 questions and annotations."""

from __future__ import annotations

from typing import Any

from sphinx_mllm.data.synthetic.colours import COLOUR_NAMES
from sphinx_mllm.data.synthetic.figures import KEYPOINT_NAMES, SKELETON, StickFigure
from sphinx_mllm.data.synthetic.masks import box_polygon
from sphinx_mllm.data.synthetic.pages import LAYOUT_CATEGORIES, Page
from sphinx_mllm.data.synthetic.questions import Question
from sphinx_mllm.data.synthetic.shapes import SHAPES, ShapeScene
from sphinx_mllm.data.synthetic.streams import annotation_id, question_id

VQA_ANSWERERS = 10

SHAPE_CATEGORIES: list[dict[str, Any]] = [
    {
        "id": s * len(COLOUR_NAMES) + c + 1,
        "name": f"{colour} {shape}",
        "supercategory": shape,
        "colour": colour,
        "shape": shape,
    }
    for s, shape in enumerate(SHAPES)
    for c, colour in enumerate(COLOUR_NAMES)
]
SHAPE_CATEGORY_IDS = {category["name"]: category["id"] for category in SHAPE_CATEGORIES}
PERSON_CATEGORY: dict[str, Any] = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [list(pair) for pair in SKELETON],
}
LAYOUT_CATEGORY_LIST = [
    {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(LAYOUT_CATEGORIES)
]


def coco_file(
    description: str, images: list[dict], annotations: list[dict], categories: list[dict]
) -> dict[str, Any]:
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def image_record(image: int, file_name: str, size: tuple[int, int]) -> dict[str, Any]:
    return {"id": image, "file_name": file_name, "width": size[0], "height": size[1]}


def shape_annotations(scene: ShapeScene, image: int) -> list[dict[str, Any]]:
    return [
        {
            "id": annotation_id(image, k),
            "image_id": image,
            "category_id": SHAPE_CATEGORY_IDS[item.category],
            "bbox": list(item.bbox),
            "area": item.area,
            "iscrowd": 0,
            "segmentation": [list(item.polygon)],
        }
        for k, item in enumerate(scene.objects)
    ]


def caption_annotation(caption: str, image: int) -> dict[str, Any]:
    return {"id": annotation_id(image, 0), "image_id": image, "caption": caption}


def keypoint_annotation(figure: StickFigure, image: int) -> dict[str, Any]:
    return {
        "id": annotation_id(image, 0),
        "image_id": image,
        "category_id": PERSON_CATEGORY["id"],
        "bbox": list(figure.bbox),
        "area": figure.area,
        "iscrowd": 0,
        "segmentation": [box_polygon(figure.bbox)],
        "keypoints": list(figure.keypoints),
        "num_keypoints": figure.num_keypoints,
    }


def layout_annotations(page: Page, image: int) -> list[dict[str, Any]]:
    return [
        {
            "id": annotation_id(image, k),
            "image_id": image,
            "category_id": LAYOUT_CATEGORIES.index(block.category) + 1,
            "bbox": list(block.bbox),
            "area": block.bbox[2] * block.bbox[3],
            "iscrowd": 0,
            "segmentation": [box_polygon(block.bbox)],
        }
        for k, block in enumerate(page.blocks)
    ]


def vqa_records(
    questions: list[Question], image: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """VQAv2 question and annotation records; all ten answerers agree."""
    asked, answered = [], []
    for k, item in enumerate(questions):
        qid = question_id(image, k)
        asked.append({"image_id": image, "question": item.question, "question_id": qid})
        answers = [
            {"answer": item.answer, "answer_confidence": "yes", "answer_id": n + 1}
            for n in range(VQA_ANSWERERS)
        ]
        answered.append(
            {
                "question_id": qid,
                "image_id": image,
                "question_type": item.question_type,
                "answer_type": item.answer_type,
                "multiple_choice_answer": item.answer,
                "answers": answers,
            }
        )
    return asked, answered


def vqa_files(
    split: str, asked: list[dict], answered: list[dict]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The VQAv2 questions file and annotations file of a split."""
    common = {
        "info": {"description": "SPHINX synthetic VQA"},
        "license": {},
        "data_type": "synthetic",
        "data_subtype": split,
    }
    return (
        {**common, "task_type": "Open-Ended", "questions": asked},
        {**common, "annotations": answered},
    )
