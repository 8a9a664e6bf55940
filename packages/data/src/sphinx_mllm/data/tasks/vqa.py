"""Question answering tasks: short-answer VQA (SPHINX's "Answer the question using a single word
or phrase."; VizWiz's "Unanswerable" hint on request) and multiple choice (LLaVA-1.5's "Answer
with the option's letter from the given choices directly.")."""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator
from typing import Any

from sphinx_mllm.data.readers.vqa import VqaQuestion
from sphinx_mllm.data.tasks.base import Sample, TaskBuilder, one_round

SHORT_ANSWER = "{question}\nAnswer the question using a single word or phrase."
UNANSWERABLE = (
    "{question} When the provided information is insufficient, respond with 'Unanswerable'.\n"
    "Answer the question using a single word or phrase."
)
MULTIPLE_CHOICE = (
    "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
)


class ShortAnswerVqa(TaskBuilder):
    """One sample per question: the question with SPHINX's short-answer instruction."""

    name = "vqa"
    default_instruction = SHORT_ANSWER

    def __init__(self, *, unanswerable_hint: bool = False, **options: Any) -> None:
        if unanswerable_hint and "instructions" not in options:
            options["instructions"] = [UNANSWERABLE]
        super().__init__(**options)

    def samples(self, source: Iterable[VqaQuestion]) -> Iterator[Sample]:
        for question in source:
            sample_id = f"vqa-{question.question_id}"
            prompt = self.instructions.for_sample(sample_id, question=question.question)
            meta = {"answers": list(question.answers), "image_size": question.image_size}
            yield Sample(sample_id, question.image, one_round(prompt, question.answer), meta)


class MultipleChoiceVqa(TaskBuilder):
    """One sample per question with choices: lettered options, the letter as the answer."""

    name = "multiple_choice"
    default_instruction = MULTIPLE_CHOICE

    def samples(self, source: Iterable[VqaQuestion]) -> Iterator[Sample]:
        for question in source:
            if not question.choices or question.correct_choice is None:
                self.drop("no choices or no correct choice")
                continue
            if len(question.choices) > len(string.ascii_uppercase):
                self.drop("more choices than letters")
                continue
            letters = string.ascii_uppercase[: len(question.choices)]
            options = "\n".join(
                f"{letter}. {choice}"
                for letter, choice in zip(letters, question.choices, strict=True)
            )
            sample_id = f"mc-{question.question_id}"
            prompt = self.instructions.for_sample(
                sample_id, question=question.question, options=options
            )
            answer = letters[question.correct_choice]
            yield Sample(
                sample_id,
                question.image,
                one_round(prompt, answer),
                {"choices": list(question.choices)},
            )


def vqa(**options: Any) -> ShortAnswerVqa:
    """Short-answer VQA with SPHINX's instruction (VQAv2, OK-VQA, GQA, TextVQA readers)."""
    return ShortAnswerVqa(**options)


def multiple_choice(**options: Any) -> MultipleChoiceVqa:
    """Multiple-choice VQA with lettered options (A-OKVQA reader)."""
    return MultipleChoiceVqa(**options)
