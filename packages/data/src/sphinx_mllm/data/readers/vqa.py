"""Visual question answering sets: VQAv2 / OK-VQA (questions + annotations files), GQA (a dict
keyed by question id), A-OKVQA (a list with choices), TextVQA (`{"data": [...]}`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers import checks
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
    allow_outside: bool = False,
) -> Iterator[VqaQuestion]:
    """VQAv2 or OK-VQA: questions joined with their annotations by question_id (an id
    annotated twice is bad: which answers would count?)."""
    problems = problems or Problems()
    checks.image_pattern(image_pattern)
    annotations: dict[int | str, tuple[str, ...]] = {}
    targets: dict[int | str, tuple[str, str | None]] = {}
    twice: set[int | str] = set()
    for index, record in enumerate(iter_array(annotations_path, "annotations")):
        where = f"{annotations_path} annotations[{index}]"
        parsed = problems.attempt(where, _vqav2_annotation, record)
        if parsed is None:
            continue
        question_id, answers, target, answer_type = parsed
        if question_id in annotations:
            twice.add(question_id)
            problems.report(where, f"question_id {question_id!r} is annotated twice")
            continue
        annotations[question_id] = answers
        targets[question_id] = (target, answer_type)

    def parse(record: Any) -> VqaQuestion:
        record = checks.record_fields(record, ("question_id", "image_id", "question"))
        question_id = checks.identifier(record["question_id"], "question_id")
        if question_id in twice:
            raise checks.RecordProblem(f"question {question_id!r} is annotated twice")
        if question_id not in annotations:
            raise checks.RecordProblem(f"question {question_id!r} has no annotation")
        target, answer_type = targets[question_id]
        return VqaQuestion(
            question_id=str(question_id),
            image=checks.image_from_pattern(image_pattern, record["image_id"], allow_outside),
            question=checks.text(record["question"], "question").strip(),
            answer=target,
            answers=annotations[question_id],
            answer_type=answer_type,
        )

    for index, record in enumerate(iter_array(questions_path, "questions")):
        parsed = problems.attempt(f"{questions_path} questions[{index}]", parse, record)
        if parsed is not None:
            yield parsed


def _vqav2_annotation(record: Any) -> tuple[int | str, tuple[str, ...], str, str | None]:
    """(question_id, every annotator's answer, the training target, answer_type)."""
    record = checks.record_fields(record, ("question_id", "answers"))
    question_id = checks.identifier(record["question_id"], "question_id")
    if not isinstance(record["answers"], list):
        raise checks.RecordProblem(f"answers is not a list: {checks.shown(record['answers'])}")
    answers = []
    for index, answer in enumerate(record["answers"]):
        answer = checks.record_fields(answer, ("answer",))
        answers.append(checks.text(answer["answer"], f"answers[{index}].answer"))
    if "multiple_choice_answer" in record:
        target = checks.text(record["multiple_choice_answer"], "multiple_choice_answer")
    elif answers:
        target = answers[0]
    else:
        raise checks.RecordProblem("no answer")
    answer_type = record.get("answer_type")
    if answer_type is not None:
        answer_type = checks.text(answer_type, "answer_type")
    return question_id, tuple(answers), target, answer_type


def read_gqa(
    path: str | Path, problems: Problems | None = None, *, allow_outside: bool = False
) -> Iterator[VqaQuestion]:
    """GQA `*_questions.json`: {question_id: {imageId, question, answer, fullAnswer, ...}}."""
    problems = problems or Problems()

    def parse(question_id: str, record: Any) -> VqaQuestion:
        record = checks.record_fields(record, ("imageId", "question", "answer"))
        image_id = checks.identifier(record["imageId"], "imageId")
        full_answer = record.get("fullAnswer")
        return VqaQuestion(
            question_id=question_id,
            image=checks.image_name(f"images/{image_id}.jpg", allow_outside),
            question=checks.text(record["question"], "question").strip(),
            answer=checks.text(record["answer"], "answer"),
            answers=(record["answer"],),
            extra={"full_answer": None if full_answer is None else str(full_answer)},
        )

    for question_id, record in iter_top_level(path, "object"):
        parsed = problems.attempt(f"{path} question {question_id}", parse, question_id, record)
        if parsed is not None:
            yield parsed


def read_aokvqa(
    path: str | Path,
    *,
    image_pattern: str = COCO_VAL_2014,
    problems: Problems | None = None,
    allow_outside: bool = False,
) -> Iterator[VqaQuestion]:
    """A-OKVQA: multiple choice (choices, correct_choice_idx) and direct answers."""
    problems = problems or Problems()
    checks.image_pattern(image_pattern)

    def parse(record: Any) -> VqaQuestion:
        record = checks.record_fields(record, ("question_id", "image_id", "question", "choices"))
        choices = checks.texts(record["choices"], "choices")
        correct = record.get("correct_choice_idx")
        if correct is not None and not 0 <= checks.integer(correct, "correct_choice_idx") < len(
            choices
        ):
            raise checks.RecordProblem(
                f"correct_choice_idx {correct} outside its {len(choices)} choices"
            )
        direct = checks.texts(record.get("direct_answers", []), "direct_answers")
        rationales = checks.texts(record.get("rationales", []), "rationales")
        return VqaQuestion(
            question_id=str(checks.identifier(record["question_id"], "question_id")),
            image=checks.image_from_pattern(image_pattern, record["image_id"], allow_outside),
            question=checks.text(record["question"], "question").strip(),
            answer=choices[correct] if correct is not None else (direct[0] if direct else ""),
            answers=direct,
            choices=choices,
            correct_choice=correct,
            extra={"rationales": list(rationales)},
        )

    for index, record in enumerate(iter_top_level(path, "array")):
        parsed = problems.attempt(f"{path} [{index}]", parse, record)
        if parsed is not None:
            yield parsed


def read_textvqa(
    path: str | Path, problems: Problems | None = None, *, allow_outside: bool = False
) -> Iterator[VqaQuestion]:
    """TextVQA: {"data": [{question_id, image_id, question, answers, image_width, ...}]}."""
    problems = problems or Problems()

    def parse(record: Any) -> VqaQuestion:
        record = checks.record_fields(record, ("question_id", "image_id", "question", "answers"))
        answers = checks.texts(record["answers"], "answers")
        if not answers:
            raise checks.RecordProblem("no answers")
        size = None
        if record.get("image_width") is not None or record.get("image_height") is not None:
            size = checks.image_size(record.get("image_width"), record.get("image_height"))
        image_id = checks.identifier(record["image_id"], "image_id")
        return VqaQuestion(
            question_id=str(checks.identifier(record["question_id"], "question_id")),
            image=checks.image_name(f"{image_id}.jpg", allow_outside),
            question=checks.text(record["question"], "question").strip(),
            answer=Counter(answers).most_common(1)[0][0],  # ties: the first given
            answers=answers,
            image_size=size,
        )

    for index, record in enumerate(iter_array(path, "data")):
        parsed = problems.attempt(f"{path} data[{index}]", parse, record)
        if parsed is not None:
            yield parsed
