"""VQA accuracy: the VQA challenge's official per-question score (VQAv2, OK-VQA, VizWiz, TextVQA).

Source: GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (`evaluate`). A
prediction matching ``m`` of the other annotators scores ``min(1, m / 3)``; the score is the mean
over the leave-one-out subsets (each of the ``n`` human answers left out once). With 10 answers
of which ``k`` match: k=0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import ClassVar

from sphinx_mllm.data.metrics.exact_match import exact_match
from sphinx_mllm.data.metrics.task_metric import MeanMetric, Record, reference_reply
from sphinx_mllm.data.metrics.vqa_normalization import normalize_vqa_answer, process_punctuation


def vqa_accuracy(
    prediction: str, answers: Sequence[str], *, normalize_answers: bool = False
) -> float:
    """The official VQA score of one predicted answer against the human `answers` (usually 10).

    Official quirks, kept: the prediction is fully normalised (`normalize_vqa_answer`), but the
    human answers only get punctuation handling, and only when they are not all identical; they
    are never lower-cased nor have number words mapped (the released VQAv2 answers are already
    normalised). ``normalize_answers=True`` normalises them like the prediction instead, as the
    TextVQA/M4C evaluators do, for annotations that are not pre-normalised.

    Computed exactly (integer arithmetic) and returned as the nearest float: 0.3 is ``0.3``.
    """
    if not answers:
        raise ValueError(f"vqa_accuracy needs at least one human answer for {prediction!r}")
    predicted = normalize_vqa_answer(prediction)
    if normalize_answers:
        references = [normalize_vqa_answer(answer) for answer in answers]
    elif len(set(answers)) > 1:
        references = [process_punctuation(answer) for answer in answers]
    else:
        references = list(answers)
    matches = sum(reference == predicted for reference in references)
    # Leaving out a matching answer leaves matches - 1 others; leaving out another leaves matches.
    capped = sum(min(3, matches - (reference == predicted)) for reference in references)
    return float(Fraction(capped, 3 * len(references)))


class VqaAccuracy(MeanMetric):
    """VQA accuracy against `meta.answers` (the human answers) when the record has them, else
    exact match with its reference reply; the extra `exact` is the exact-match rate."""

    name: ClassVar[str] = "vqa"

    def score_one(self, prediction: str, record: Record) -> tuple[float, dict[str, float]]:
        answers = (record.get("meta") or {}).get("answers")
        reference = reference_reply(record)
        if answers:
            return vqa_accuracy(prediction, answers), {"exact": exact_match(prediction, reference)}
        return exact_match(prediction, reference), {}
