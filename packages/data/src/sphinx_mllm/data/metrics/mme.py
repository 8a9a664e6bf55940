"""MME scores: per category, accuracy and accuracy+ (an image counts only if all its questions do).

Source: the MME benchmark's `eval_tool/calculation.py` (Fu et al. 2023), whose scoring SPHINX's
`eval_mm/evaluate.py` repeats. Each MME image has two yes/no questions. An answer is lower-cased
(and, here, stripped) and read as "yes" or "no" when it is exactly that, else by which of "yes"
or "no" occurs in its first 4 characters ("yes" wins), else "other" (always wrong). Scores are in
percent, as MME reports them: a category's score is ``acc + acc_plus`` (at most 200); the
perception total sums its 10 categories (at most 2000) and the cognition total its 4.

Differences from the official tool: questions are grouped by ``image_id`` rather than by
consecutive pairs of lines, and an image with other than two questions is scored (all its
questions must be right) instead of failing an assertion.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

PERCEPTION_CATEGORIES: tuple[str, ...] = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION_CATEGORIES: tuple[str, ...] = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


@dataclass(frozen=True)
class MmeRecord:
    """One MME question: its category, image, the model's answer and the "Yes"/"No" truth."""

    category: str
    image_id: str
    prediction: str
    answer: str


@dataclass(frozen=True)
class MmeCategoryScore:
    """One category's accuracy and accuracy+ in percent, their sum, and what they count."""

    acc: float
    acc_plus: float
    score: float
    questions: int
    images: int


@dataclass(frozen=True)
class MmeScores:
    """Per-category scores and the perception and cognition totals (over categories present)."""

    categories: dict[str, MmeCategoryScore]
    perception: float
    cognition: float


def mme_parse_answer(answer: str) -> str:
    """MME's reading of an answer: "yes", "no" or "other"."""
    answer = answer.strip().lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_scores(records: Iterable[MmeRecord]) -> MmeScores:
    """MME's acc, acc+ and score per category, plus the perception and cognition totals."""
    by_category: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        truth = record.answer.strip().lower()
        if truth not in ("yes", "no"):
            raise ValueError(
                f"MME answer for image {record.image_id!r} ({record.category}) must be Yes or No; "
                f"got {record.answer!r}"
            )
        correct = mme_parse_answer(record.prediction) == truth
        by_category[record.category][record.image_id].append(correct)
    if not by_category:
        raise ValueError("mme_scores needs at least one record")
    categories = {name: _category_score(images) for name, images in by_category.items()}
    return MmeScores(
        categories=categories,
        perception=_total(categories, PERCEPTION_CATEGORIES),
        cognition=_total(categories, COGNITION_CATEGORIES),
    )


def _category_score(images: dict[str, list[bool]]) -> MmeCategoryScore:
    answers = [correct for results in images.values() for correct in results]
    acc = 100 * sum(answers) / len(answers)
    acc_plus = 100 * sum(all(results) for results in images.values()) / len(images)
    return MmeCategoryScore(
        acc=acc, acc_plus=acc_plus, score=acc + acc_plus, questions=len(answers), images=len(images)
    )


def _total(categories: dict[str, MmeCategoryScore], names: tuple[str, ...]) -> float:
    return sum(categories[name].score for name in names if name in categories)
