"""Evaluation metrics (one file per family), as functions and as task metrics.

Functions: per-question scores return floats in [0, 1] (`vqa_accuracy`, `exact_match`,
`relaxed_accuracy`, `anls`) or a bool (`rec_hit`), so a benchmark score is their mean;
`rec_accuracy`, `pope_scores`, `mme_scores` and `cider_d` take a whole benchmark.

Task metrics (`task_metric.TaskMetric`): objects fed ``add(reply, record)`` for every record of
a task and asked for ``result()``, so corpus-level scores (box mAP, CIDEr) are computed over all
records. `make_metric(name)` builds one; `metric_for_task(task)` is the `auto` choice
(`task_metrics.py` holds the table).
"""

from sphinx_mllm.data.metrics.anls import anls, levenshtein, normalized_levenshtein
from sphinx_mllm.data.metrics.box_map import DetectionMap, LayoutMap, coco_box_ap
from sphinx_mllm.data.metrics.cider import Cider, cider_d, tokenize
from sphinx_mllm.data.metrics.exact_match import ExactMatch, exact_match, normalize_exact
from sphinx_mllm.data.metrics.mme import (
    COGNITION_CATEGORIES,
    PERCEPTION_CATEGORIES,
    MmeCategoryScore,
    MmeRecord,
    MmeScores,
    mme_parse_answer,
    mme_scores,
)
from sphinx_mllm.data.metrics.pck import Pck, reply_keypoints
from sphinx_mllm.data.metrics.phrase_grounding import PhraseBoxF1, match_boxes
from sphinx_mllm.data.metrics.pope import PopeScores, pope_answer_is_yes, pope_scores
from sphinx_mllm.data.metrics.rec import RecAccuracy, rec_accuracy, rec_hit, rec_iou
from sphinx_mllm.data.metrics.relaxed import relaxed_accuracy, relaxed_correctness
from sphinx_mllm.data.metrics.task_metric import MeanMetric, MetricResult, TaskMetric
from sphinx_mllm.data.metrics.task_metrics import (
    AUTO_METRICS,
    TASK_METRICS,
    make_metric,
    metric_for_task,
)
from sphinx_mllm.data.metrics.vqa import VqaAccuracy, vqa_accuracy
from sphinx_mllm.data.metrics.vqa_normalization import (
    normalize_vqa_answer,
    process_digit_article,
    process_punctuation,
)

__all__ = [
    "AUTO_METRICS",
    "COGNITION_CATEGORIES",
    "PERCEPTION_CATEGORIES",
    "TASK_METRICS",
    "Cider",
    "DetectionMap",
    "ExactMatch",
    "LayoutMap",
    "MeanMetric",
    "MetricResult",
    "MmeCategoryScore",
    "MmeRecord",
    "MmeScores",
    "Pck",
    "PhraseBoxF1",
    "PopeScores",
    "RecAccuracy",
    "TaskMetric",
    "VqaAccuracy",
    "anls",
    "cider_d",
    "coco_box_ap",
    "exact_match",
    "levenshtein",
    "make_metric",
    "match_boxes",
    "metric_for_task",
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
    "reply_keypoints",
    "tokenize",
    "vqa_accuracy",
]
