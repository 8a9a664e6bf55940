"""Evaluation metrics as pure functions of predictions and references (one file per family).

Per-question scores return floats in [0, 1] (`vqa_accuracy`, `exact_match`, `relaxed_accuracy`,
`anls`) or a bool (`rec_hit`), so a benchmark score is their mean; `rec_accuracy`, `pope_scores`
and `mme_scores` take a whole benchmark.
"""

from sphinx_mllm.data.metrics.anls import anls, levenshtein, normalized_levenshtein
from sphinx_mllm.data.metrics.exact_match import exact_match, normalize_exact
from sphinx_mllm.data.metrics.mme import (
    COGNITION_CATEGORIES,
    PERCEPTION_CATEGORIES,
    MmeCategoryScore,
    MmeRecord,
    MmeScores,
    mme_parse_answer,
    mme_scores,
)
from sphinx_mllm.data.metrics.pope import PopeScores, pope_answer_is_yes, pope_scores
from sphinx_mllm.data.metrics.rec import rec_accuracy, rec_hit, rec_iou
from sphinx_mllm.data.metrics.relaxed import relaxed_accuracy, relaxed_correctness
from sphinx_mllm.data.metrics.vqa import vqa_accuracy
from sphinx_mllm.data.metrics.vqa_normalization import (
    normalize_vqa_answer,
    process_digit_article,
    process_punctuation,
)

__all__ = [
    "COGNITION_CATEGORIES",
    "PERCEPTION_CATEGORIES",
    "MmeCategoryScore",
    "MmeRecord",
    "MmeScores",
    "PopeScores",
    "anls",
    "exact_match",
    "levenshtein",
    "mme_parse_answer",
    "mme_scores",
    "normalize_exact",
    "normalize_vqa_answer",
    "normalized_levenshtein",
    "pope_answer_is_yes",
    "pope_scores",
    "process_digit_article",
    "process_punctuation",
    "rec_accuracy",
    "rec_hit",
    "rec_iou",
    "relaxed_accuracy",
    "relaxed_correctness",
    "vqa_accuracy",
]
