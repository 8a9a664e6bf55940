"""Exact match after light normalisation (GQA and other single-answer benchmarks).

SPHINX's protocol: lower-case both sides and strip the final period; whitespace at the ends is
stripped too. SPHINX's released script (`eval_mm/utils/metric.py`) instead deletes every period,
so there "3.5" equals "35"; that is not reproduced here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from sphinx_mllm.data.metrics.task_metric import MeanMetric, Record, reference_reply


def normalize_exact(text: str) -> str:
    """``"  Yes. "`` -> ``"yes"``: strip, lower-case, drop trailing periods."""
    return text.strip().lower().rstrip(".").strip()


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals the (or any) normalised answer, else 0.0."""
    references = [answers] if isinstance(answers, str) else list(answers)
    if not references:
        raise ValueError(f"exact_match needs at least one answer for {prediction!r}")
    predicted = normalize_exact(prediction)
    return float(any(predicted == normalize_exact(answer) for answer in references))


class ExactMatch(MeanMetric):
    """Exact match of each reply with the record's reference reply, averaged."""

    name: ClassVar[str] = "exact"

    def score_one(self, prediction: str, record: Record) -> tuple[float, dict[str, float]]:
        return exact_match(prediction, reference_reply(record)), {}
