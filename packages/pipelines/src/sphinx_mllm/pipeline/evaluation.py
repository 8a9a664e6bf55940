"""Score a model on LLaVA-format records: the last reply of each conversation is generated
(greedily) from the turns before it, and each task's replies are scored together by the metric
that fits the task (`sphinx_mllm.data.metrics`), so corpus-level metrics (box mAP, CIDEr) see
all of a task's records at once.

Metrics: `auto` picks by the record's `meta.task` (`metric_for_task`): detection and layout
`detection_map` / `layout_map` (mAP@0.5, COCO mAP as the extra `coco_map`), grounded captions
`phrase_f1` (phrase-box F1@0.5), pose `pck` (PCK@0.2), short and detailed captions and REG
`cider` (CIDEr-D), REC `rec` (Acc@0.5 with the extra `miou`), VQA `vqa` (VQA accuracy against
`meta.answers`, else exact), multiple choice and everything else `exact` (normalised exact
match). Any of those names applies one metric to every record instead. The ground truth each
metric needs is read from the record's `meta`; every record is checked for it before the first
reply is generated.

How long a reply may run: the model config's `generation.task_max_new_tokens[task]` for a record
of that task (SPHINX: 10 new tokens for VQA, 30 for REC), else the longest reference of its
batch in tokens plus `extra_tokens`.

    report = evaluate(model, [DataSource.parse("val.jsonl", images="data/")])
    print(report.table())
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sphinx_mllm.data.metrics import TASK_METRICS, TaskMetric, make_metric, metric_for_task
from sphinx_mllm.data.readers import Problems
from sphinx_mllm.data.readers.llava import llava_images, read_llava
from sphinx_mllm.pipeline.config import GenerationDefaults
from sphinx_mllm.pipeline.generation import generate
from sphinx_mllm.pipeline.images import open_image
from sphinx_mllm.pipeline.training.data import DataSource, with_readable_images

if TYPE_CHECKING:
    from sphinx_mllm.pipeline.model import SphinxModel

METRICS = ("auto", *TASK_METRICS)


@dataclass
class Prediction:
    """One generated reply. `score` is the record's own score under its metric (None where the
    metric has none, as box mAP); `extra` its per-record figures (e.g. `iou`, `precision`)."""

    record_id: str
    task: str
    metric: str
    question: str
    reference: str
    prediction: str
    score: float | None = None
    images: list[Path] = field(default_factory=list)  # the record's images, in order
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Per-record predictions and, per task, its metric's corpus score (`tasks`)."""

    predictions: list[Prediction]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def by_task(self) -> dict[str, dict[str, Any]]:
        """{task: {"metric", "count", "score", extras...}}: each task's corpus score."""
        return {task: dict(row) for task, row in self.tasks.items()}

    def table(self) -> str:
        lines = [f"  {'task':<18} {'metric':<13} {'n':>5} {'score':>7}  other"]
        for task, row in self.by_task().items():
            other = ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if k not in ("metric", "count", "score")
            )
            lines.append(
                f"  {task:<18} {row['metric']:<13} {row['count']:>5} {row['score']:>7.3f}  {other}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.by_task(),
            "predictions": [
                p.__dict__ | {"images": [str(path) for path in p.images]} for p in self.predictions
            ],
        }


def metric_for(record: Mapping[str, Any], metric: str) -> str:
    """The metric a record is scored by: `metric` itself, or under `auto` its task's."""
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}")
    if metric != "auto":
        return metric
    return metric_for_task((record.get("meta") or {}).get("task"))


def score_predictions(
    predictions: Sequence[Prediction], records: Sequence[Mapping[str, Any]]
) -> EvalReport:
    """Score each prediction (its `metric` already chosen) against its record, one metric
    object per (task, metric), and fill in the per-record scores and figures. A task's row is
    named by the task, or "task (metric)" when records of one task went to several metrics."""
    if len(predictions) != len(records):
        raise ValueError(
            f"score_predictions needs one record per prediction; got {len(predictions)} "
            f"predictions and {len(records)} records"
        )
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, prediction in enumerate(predictions):
        groups[(prediction.task, prediction.metric)].append(index)
    metrics_of_task: dict[str, int] = defaultdict(int)
    for task, _ in groups:
        metrics_of_task[task] += 1
    tasks: dict[str, dict[str, Any]] = {}
    for (task, name), indices in sorted(groups.items()):
        metric = make_metric(name)
        for index in indices:
            predictions[index].extra = metric.add(predictions[index].prediction, records[index])
        result = metric.result()
        for index, value in zip(indices, result.per_record, strict=True):
            predictions[index].score = value
        key = task if metrics_of_task[task] == 1 else f"{task} ({name})"
        tasks[key] = {"metric": name, "count": result.count, "score": result.score}
        tasks[key].update(result.extras)
    return EvalReport(list(predictions), tasks)


def check_ground_truth(records: Sequence[Mapping[str, Any]], metric: str) -> None:
    """Raise (naming the record) when a record lacks what its metric needs, before any reply
    is generated: an empty reply is added to a throwaway metric of its kind."""
    checkers: dict[str, TaskMetric] = {}
    for record in records:
        name = metric_for(record, metric)
        if name not in checkers:
            checkers[name] = make_metric(name)
        checkers[name].add("", record)


def evaluate(
    model: SphinxModel,
    sources: Sequence[DataSource],
    *,
    metric: str = "auto",
    batch_size: int = 16,
    limit: int | None = None,
    extra_tokens: int = 16,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Generate the last reply of every record (at most `limit` per source) and score it. The
    reply may run to the model's limit for the record's task, or else `extra_tokens` past the
    reference's own token count. Every record and image is checked before the first is
    generated, and so is the ground truth each record's metric needs; an empty file or a limit
    under 1 is an error."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    items = records_to_score(sources, limit=limit)
    check_ground_truth([record for _, record in items], metric)
    task_limits = GenerationDefaults.of(model.model_config).task_max_new_tokens
    predictions: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        predictions += _predict_batch(model, chunk, metric, task_limits, extra_tokens)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(items)), len(items))
    return score_predictions(predictions, [record for _, record in items])


def records_to_score(
    sources: Sequence[DataSource], *, limit: int | None
) -> list[tuple[DataSource, dict[str, Any]]]:
    """The first `limit` records of each source (all when None), each record and its images
    checked; an empty file, or a limit under 1, is an error."""
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive number of records per file, got {limit!r}")
    items = []
    for source in sources:
        if not source.path.is_file():
            raise FileNotFoundError(f"No data file at {source.path}")
        records = list(read_llava(source.path, allow_outside=source.images_outside_root))
        if not records:
            raise ValueError(f"{source.path}: the file holds no records to score")
        records = with_readable_images(source, records[:limit], Problems("raise"))
        items += [(source, record) for record in records]
    return items


def _task(source: DataSource, record: dict[str, Any]) -> str:
    return str((record.get("meta") or {}).get("task", source.name))


def _predict_batch(
    model: SphinxModel, chunk, metric: str, task_limits: dict[str, int], extra_tokens: int
) -> list[Prediction]:
    """The predictions of a batch, in its order, generated in groups by how many new tokens
    a reply may have: a group per task limit of the model, and the other records together under
    the reference-length rule (their longest reference plus `extra_tokens`)."""
    groups: dict[int | None, list[int]] = defaultdict(list)
    for position, item in enumerate(chunk):
        groups[task_limits.get(_task(*item))].append(position)
    rest = groups.pop(None, [])
    if rest:
        tokenizer = model.processor.tokenizer
        references = (chunk[i][1]["conversations"][-1]["value"] for i in rest)
        longest = max(len(tokenizer(text)["input_ids"]) for text in references)
        groups[longest + extra_tokens] += rest  # may join a task's group of the same length
    predictions: dict[int, Prediction] = {}
    for max_new_tokens, positions in groups.items():
        group = [chunk[i] for i in positions]
        found = _predict(model, group, metric, max_new_tokens)
        predictions.update(zip(positions, found, strict=True))
    return [predictions[i] for i in range(len(chunk))]


def _predict(model: SphinxModel, chunk, metric: str, max_new_tokens: int) -> list[Prediction]:
    conversations, images, references, paths = [], [], [], []
    for source, record in chunk:
        turns = record["conversations"]
        record_paths = [source.image_path(name) for name in llava_images(record)]
        conversations.append(turns[:-1])
        images.append([open_image(path) for path in record_paths])
        references.append(turns[-1]["value"])
        paths.append(record_paths)
    inputs = model.processor(conversations, images, generation=True).to(model.device)
    with torch.no_grad():
        output = generate(model, **inputs, max_new_tokens=max_new_tokens)
    results = []
    for (source, record), text, reference, record_paths in zip(
        chunk, output.texts, references, paths, strict=True
    ):
        question = next(
            (t["value"] for t in reversed(record["conversations"][:-1]) if t["from"] == "human"),
            "",
        )
        results.append(
            Prediction(
                record_id=str(record.get("id", "")),
                task=_task(source, record),
                metric=metric_for(record, metric),
                question=question,
                reference=reference,
                prediction=text.strip(),
                images=record_paths,
            )
        )
    return results
