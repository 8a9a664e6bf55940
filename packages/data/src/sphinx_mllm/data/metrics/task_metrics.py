"""Which metric scores which task: the metric objects by name, and the `auto` choice by task.

| task (`meta.task`) | metric | score | extras |
|---|---|---|---|
| detection | `detection_map` | mAP@0.5 | `coco_map` (AP@[.5:.95]) |
| layout | `layout_map` | mAP@0.5 | `coco_map` |
| grounded_caption | `phrase_f1` | phrase-box F1@0.5 (micro) | `precision`, `recall` |
| pose | `pck` | PCK@0.2 of the box's larger side | |
| short_caption, detailed_caption, reg | `cider` | CIDEr-D, pycocoevalcap's scale (0 to 10) | |
| rec | `rec` | Acc@0.5 | `miou` |
| vqa | `vqa` | VQA accuracy (exact without `meta.answers`) | `exact` |
| multiple_choice, anything else | `exact` | normalised exact match | |

REG (region captioning) is scored like captions, as its benchmarks (RefCOCOg REG) are, with
CIDEr against the reference expression. A plain dict rather than an entry-point registry: a new
metric is a code change in the evaluation anyway.
"""

from __future__ import annotations

import difflib
from typing import Any

from sphinx_mllm.data.metrics.box_map import DetectionMap, LayoutMap
from sphinx_mllm.data.metrics.cider import Cider
from sphinx_mllm.data.metrics.exact_match import ExactMatch
from sphinx_mllm.data.metrics.pck import Pck
from sphinx_mllm.data.metrics.phrase_grounding import PhraseBoxF1
from sphinx_mllm.data.metrics.rec import RecAccuracy
from sphinx_mllm.data.metrics.task_metric import TaskMetric
from sphinx_mllm.data.metrics.vqa import VqaAccuracy

TASK_METRICS: dict[str, type[TaskMetric]] = {
    metric.name: metric
    for metric in (
        ExactMatch, VqaAccuracy, RecAccuracy, DetectionMap, LayoutMap, PhraseBoxF1, Pck, Cider,
    )
}  # fmt: skip

AUTO_METRICS: dict[str, str] = {
    "vqa": "vqa",
    "multiple_choice": "exact",
    "rec": "rec",
    "detection": "detection_map",
    "layout": "layout_map",
    "grounded_caption": "phrase_f1",
    "pose": "pck",
    "short_caption": "cider",
    "detailed_caption": "cider",
    "reg": "cider",
}
DEFAULT_METRIC = "exact"


def metric_for_task(task: str | None) -> str:
    """The metric `auto` gives a record of `task` (its `meta.task`); `exact` for others."""
    return AUTO_METRICS.get(str(task), DEFAULT_METRIC)


def make_metric(name: str, **options: Any) -> TaskMetric:
    """A fresh metric object by name (`options`: e.g. ``style``, ``frame``, ``threshold``)."""
    if name not in TASK_METRICS:
        close = difflib.get_close_matches(str(name), list(TASK_METRICS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(TASK_METRICS)}{hint}")
    return TASK_METRICS[name](**options)
