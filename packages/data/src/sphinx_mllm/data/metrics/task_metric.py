"""The interface of a task's metric: records go in one at a time, the corpus score comes out.

Some metrics are a mean of per-record scores (VQA accuracy, exact match, REC Acc@0.5), others
only exist over a corpus: average precision ranks every box of every record together, and
CIDEr's n-gram weights come from the references of all records. Both fit one shape:

    metric = make_metric("detection_map")
    for reply, record in zip(replies, records):
        figures = metric.add(reply, record)   # per-record figures at once, e.g. {"iou": 0.83}
    result = metric.result()                  # MetricResult(score, count, extras, per_record)

`add` reads the ground truth from the record (LLaVA format: `id`, `conversations`, `meta`) and
raises a `ValueError` naming the record when what its metric needs is missing; a malformed reply
never raises, it scores as a miss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

Record = Mapping[str, Any]


@dataclass(frozen=True)
class MetricResult:
    """A metric over a corpus: its score, how many records, extra figures, and each record's own
    score in the order they were added (None where the metric has no per-record score, as AP)."""

    score: float
    count: int
    extras: dict[str, float] = field(default_factory=dict)
    per_record: tuple[float | None, ...] = ()


class TaskMetric(ABC):
    """Accumulates (reply, record) pairs; `result()` scores everything added so far."""

    name: ClassVar[str]

    @abstractmethod
    def add(self, prediction: str, record: Record) -> dict[str, float]:
        """Take one reply and its record; return the figures known for it alone (may be {})."""

    @abstractmethod
    def result(self) -> MetricResult:
        """The corpus score of every record added; an error when none was."""

    def _need_records(self, count: int) -> None:
        if not count:
            raise ValueError(f"the {self.name} metric has no records to score")


class MeanMetric(TaskMetric):
    """A metric whose corpus score is the mean of per-record scores; each per-record figure
    (from `score_one`) is averaged into an extra of the same name unless `summary_names`
    renames it."""

    summary_names: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._scores: list[float] = []
        self._figures: list[dict[str, float]] = []

    @abstractmethod
    def score_one(self, prediction: str, record: Record) -> tuple[float, dict[str, float]]:
        """One record's score and extra figures."""

    def add(self, prediction: str, record: Record) -> dict[str, float]:
        value, figures = self.score_one(prediction, record)
        self._scores.append(value)
        self._figures.append(figures)
        return figures

    def result(self) -> MetricResult:
        count = len(self._scores)
        self._need_records(count)
        keys = sorted({key for figures in self._figures for key in figures})
        extras = {
            self.summary_names.get(key, key): sum(f.get(key, 0.0) for f in self._figures) / count
            for key in keys
        }
        return MetricResult(sum(self._scores) / count, count, extras, tuple(self._scores))


def record_id(record: Record) -> str:
    """The record's `id`, or "<no id>" for messages."""
    return str(record.get("id", "<no id>"))


def meta_field(record: Record, key: str, metric: str, what: str) -> Any:
    """`record["meta"][key]`, or a ValueError naming the record, the metric and what it needs."""
    meta = record.get("meta") or {}
    value = meta.get(key) if isinstance(meta, Mapping) else None
    if value is None:
        raise ValueError(
            f"record {record_id(record)!r}: the {metric} metric needs meta.{key} ({what})"
        )
    return value


def reference_reply(record: Record) -> str:
    """The reference answer: the last turn of the record's conversation."""
    turns = record.get("conversations") or []
    if not turns:
        raise ValueError(f"record {record_id(record)!r} has no conversation to score against")
    return str(turns[-1]["value"])


def normalize_phrase(text: str) -> str:
    """How phrases, categories and keypoint names are compared: lower-case, underscores as
    spaces, runs of whitespace collapsed (``"Left_Shoulder "`` -> ``"left shoulder"``)."""
    return " ".join(text.replace("_", " ").lower().split())
