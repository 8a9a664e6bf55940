"""Visual question answering sets: VQAv2 / OK-VQA (questions + annotations files), GQA (a dict
keyed by question id), A-OKVQA (a list with choices), TextVQA (`{"data": [...]}`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sphinx_mllm.data.readers.json_stream import iter_array, iter_top_level
from sphinx_mllm.data.readers.problems import Problems

COCO_VAL_2014 = "COCO_val2014_{image_id:012d}.jpg"


@dataclass(frozen=True)
class VqaQuestion:
    question_id: str
    image: str
    question: str
    answer: str  # the training target
    answers: tuple[str, ...] = ()  # every annotator's answer, for scoring
    answer_type: str | None = None
    choices: tuple[str, ...] = ()
    correct_choice: int | None = None
    image_size: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)


def read_vqav2(
    questions_path: str | Path,
    annotations_path: str | Path,
    *,
    image_pattern: str = COCO_VAL_2014,
    problems: Problems | None = None,
) -> Iterator[VqaQuestion]:
    """VQAv2 or OK-VQA: questions joined with their annotations by question_id."""
    problems = problems or Problems()
    annotations = {}
    for index, record in enumerate(iter_array(annotations_path, "annotations")):
        if not isinstance(record, dict) or "question_id" not in record or "answers" not in record:
            problems.report(
                f"{annotations_path} annotations[{index}]", "missing question_id or answers"
            )
            continue
        annotations[record["question_id"]] = record
    for index, record in enumerate(iter_array(questions_path, "questions")):
        where = f"{questions_path} questions[{index}]"
        if not isinstance(record, dict) or not {"question_id", "image_id", "question"} <= set(
            record
        ):
            problems.report(where, "missing question_id, image_id or question")
            continue
        annotation = annotations.get(record["question_id"])
        if annotation is None:
            problems.report(where, f"question {record['question_id']} has no annotation")
            continue
        answers = tuple(
            str(a["answer"]) for a in annotation["answers"] if isinstance(a, dict) and "answer" in a
        )
        target = annotation.get("multiple_choice_answer") or (answers[0] if answers else None)
        if not target:
            problems.report(where, "no answer")
            continue
        yield VqaQuestion(
            question_id=str(record["question_id"]),
            image=image_pattern.format(image_id=int(record["image_id"])),
            question=str(record["question"]).strip(),
            answer=str(target),
            answers=answers,
            answer_type=annotation.get("answer_type"),
        )


def read_gqa(path: str | Path, problems: Problems | None = None) -> Iterator[VqaQuestion]:
    """GQA `*_questions.json`: {question_id: {imageId, question, answer, fullAnswer, ...}}."""
    problems = problems or Problems()
    for question_id, record in iter_top_level(path):
        if not isinstance(record, dict) or not {"imageId", "question", "answer"} <= set(record):
            problems.report(f"{path} question {question_id}", "missing imageId, question or answer")
            continue
        yield VqaQuestion(
            question_id=str(question_id),
            image=f"images/{record['imageId']}.jpg",
            question=str(record["question"]).strip(),
            answer=str(record["answer"]),
            answers=(str(record["answer"]),),
            extra={"full_answer": record.get("fullAnswer")},
        )


def read_aokvqa(
    path: str | Path, *, image_pattern: str = COCO_VAL_2014, problems: Problems | None = None
) -> Iterator[VqaQuestion]:
    """A-OKVQA: multiple choice (choices, correct_choice_idx) and direct answers."""
    problems = problems or Problems()
    for index, record in enumerate(iter_top_level(path)):
        where = f"{path} [{index}]"
        if not isinstance(record, dict) or not {
            "question_id",
            "image_id",
            "question",
            "choices",
        } <= set(record):
            problems.report(where, "missing question_id, image_id, question or choices")
            continue
        choices = tuple(str(c) for c in record["choices"])
        correct = record.get("correct_choice_idx")
        if correct is not None and not 0 <= correct < len(choices):
            problems.report(
                where, f"correct_choice_idx {correct} outside its {len(choices)} choices"
            )
            continue
        direct = tuple(str(a) for a in record.get("direct_answers", ()))
        yield VqaQuestion(
            question_id=str(record["question_id"]),
            image=image_pattern.format(image_id=int(record["image_id"])),
            question=str(record["question"]).strip(),
            answer=choices[correct] if correct is not None else (direct[0] if direct else ""),
            answers=direct,
            choices=choices,
            correct_choice=correct,
            extra={"rationales": record.get("rationales", [])},
        )


def read_textvqa(path: str | Path, problems: Problems | None = None) -> Iterator[VqaQuestion]:
    """TextVQA: {"data": [{question_id, image_id, question, answers, image_width, ...}]}."""
    problems = problems or Problems()
    for index, record in enumerate(iter_array(path, "data")):
        if not isinstance(record, dict) or not {
            "question_id",
            "image_id",
            "question",
            "answers",
        } <= set(record):
            problems.report(
                f"{path} data[{index}]", "missing question_id, image_id, question or answers"
            )
            continue
        answers = tuple(str(a) for a in record["answers"])
        if not answers:
            problems.report(f"{path} data[{index}]", "no answers")
            continue
        size = (record.get("image_width"), record.get("image_height"))
        yield VqaQuestion(
            question_id=str(record["question_id"]),
            image=f"{record['image_id']}.jpg",
            question=str(record["question"]).strip(),
            answer=max(set(answers), key=answers.count),
            answers=answers,
            image_size=(int(size[0]), int(size[1])) if None not in size else None,
        )
