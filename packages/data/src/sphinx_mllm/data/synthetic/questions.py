"""Short-answer questions about a shape scene, in the style of VQAv2, unambiguous by
construction: a colour is asked only of a shape that occurs once, a shape only of a colour that
occurs once; counts and yes/no questions are exact (yes/no about half each, the "no" ones
usually sharing a colour or a shape with something in the scene)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from sphinx_mllm.data.synthetic.captions import article, indefinite
from sphinx_mllm.data.synthetic.colours import COLOUR_NAMES
from sphinx_mllm.data.synthetic.shapes import PLURALS, SHAPES, ShapeScene

ANSWER_TYPES = ("yes/no", "number", "other")  # VQAv2's


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    answer_type: str
    question_type: str  # the question's leading words, as VQAv2 groups them


def _colour_questions(scene: ShapeScene) -> list[Question]:
    by_shape = Counter(item.shape for item in scene.objects)
    return [
        Question(f"What color is the {item.shape}?", item.colour, "other", "what color is the")
        for item in scene.objects
        if by_shape[item.shape] == 1
    ]


def _shape_questions(scene: ShapeScene) -> list[Question]:
    by_colour = Counter(item.colour for item in scene.objects)
    return [
        Question(
            f"What shape is the {item.colour} object?", item.shape, "other", "what shape is the"
        )
        for item in scene.objects
        if by_colour[item.colour] == 1
    ]


def _count_questions(scene: ShapeScene, rng: np.random.Generator) -> list[Question]:
    """Counts of each shape present, of one absent shape (answer 0), of each colour present and
    of all objects."""
    by_shape = Counter(item.shape for item in scene.objects)
    by_colour = Counter(item.colour for item in scene.objects)
    absent = [shape for shape in SHAPES if shape not in by_shape]
    asked = list(by_shape) + ([absent[int(rng.integers(len(absent)))]] if absent else [])
    questions = [
        Question(
            f"How many {PLURALS[shape]} are there?", str(by_shape[shape]), "number", "how many"
        )
        for shape in asked
    ]
    questions += [
        Question(f"How many {colour} objects are there?", str(n), "number", "how many")
        for colour, n in by_colour.items()
    ]
    total = str(len(scene.objects))
    return [*questions, Question("How many objects are there?", total, "number", "how many")]


def _yes_no_questions(scene: ShapeScene, rng: np.random.Generator) -> list[Question]:
    """One "yes" per kind of object present and as many "no"s, mostly near misses."""
    present = list(dict.fromkeys((item.colour, item.shape) for item in scene.objects))
    absent = [(c, s) for s in SHAPES for c in COLOUR_NAMES if (c, s) not in present]
    near = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
    pool = near if near and rng.random() < 0.75 else absent
    missing = [pool[i] for i in rng.permutation(len(pool))[: len(present)]]
    return [
        Question(f"Is there {indefinite(f'{c} {s}')}?", answer, "yes/no", f"is there {article(c)}")
        for pairs, answer in ((present, "yes"), (missing, "no"))
        for c, s in pairs
    ]


def make_questions(
    scene: ShapeScene, rng: np.random.Generator, max_questions: int = 4
) -> list[Question]:
    """Up to `max_questions` distinct questions, drawn in turn from the families (colour, shape,
    count, yes/no) in a random order, so a scene gets as many kinds as it allows."""
    families = [
        _colour_questions(scene),
        _shape_questions(scene),
        _count_questions(scene, rng),
        _yes_no_questions(scene, rng),
    ]
    queues = [[family[i] for i in rng.permutation(len(family))] for family in families if family]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    chosen: list[Question] = []
    while len(chosen) < max_questions and any(queues):
        for queue in queues:
            if queue and len(chosen) < max_questions:
                chosen.append(queue.pop(0))
    return chosen
