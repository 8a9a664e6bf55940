"""Score a model on LLaVA-format records: the last reply of each conversation is generated
(greedily) from the turns before it and compared with the reference by a metric.

Metrics: `exact` (normalised exact match), `vqa` (the VQA challenge's accuracy against
`meta.answers` when the record has them, else exact), `rec` (Acc@0.5 under SPHINX's protocol
against `meta.bbox_xyxy` on `meta.image_size`), and `auto`, which picks by the record's
`meta.task`: `vqa` for short-answer VQA, `rec` for REC, `exact` otherwise.

How long a reply may run: the model config's `generation.task_max_new_tokens[task]` for a record
of that task (SPHINX: 10 new tokens for VQA, 30 for REC), else the longest reference of its
batch in tokens plus `extra_tokens`.

    report = evaluate(model, [DataSource.parse("val.jsonl", images="data/")])
    print(report.table())
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sphinx_mllm.data.metrics import exact_match, rec_iou, vqa_accuracy
from sphinx_mllm.data.readers import Problems
from sphinx_mllm.data.readers.llava import read_llava
from sphinx_mllm.pipeline.config import GenerationDefaults
from sphinx_mllm.pipeline.generation import generate
from sphinx_mllm.pipeline.images import open_image
from sphinx_mllm.pipeline.training.data import DataSource, with_readable_images

if TYPE_CHECKING:
    from sphinx_mllm.pipeline.model import SphinxModel

METRICS = ("auto", "exact", "vqa", "rec")
AUTO_METRIC = {"vqa": "vqa", "rec": "rec"}


@dataclass
class Prediction:
    record_id: str
    task: str
    metric: str
    question: str
    reference: str
    prediction: str
    score: float
    image: Path | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Per-record predictions and the per-task mean scores."""

    predictions: list[Prediction]

    def by_task(self) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[Prediction]] = defaultdict(list)
        for prediction in self.predictions:
            groups[prediction.task].append(prediction)
        summary = {}
        for task, items in sorted(groups.items()):
            row: dict[str, Any] = {
                "metric": items[0].metric,
                "count": len(items),
                "score": sum(p.score for p in items) / len(items),
            }
            extras = {key for p in items for key in p.extra}
            for key in sorted(extras):
                row[key] = sum(p.extra.get(key, 0.0) for p in items) / len(items)
            summary[task] = row
        return summary

    def table(self) -> str:
        lines = [f"  {'task':<18} {'metric':<8} {'n':>5} {'score':>7}  other"]
        for task, row in self.by_task().items():
            other = ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if k not in ("metric", "count", "score")
            )
            lines.append(
                f"  {task:<18} {row['metric']:<8} {row['count']:>5} {row['score']:>7.3f}  {other}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.by_task(),
            "predictions": [p.__dict__ | {"image": str(p.image)} for p in self.predictions],
        }


def score(metric: str, prediction: str, record: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The score of one prediction for `record` (and extra figures, e.g. the IoU)."""
    meta = record.get("meta") or {}
    reference = record["conversations"][-1]["value"]
    if metric == "rec":
        box, size = meta.get("bbox_xyxy"), meta.get("image_size")
        if box is None or size is None:
            raise ValueError(
                f"Record {record.get('id')!r}: the rec metric needs meta.bbox_xyxy and "
                "meta.image_size (pixels of the original image)"
            )
        iou = rec_iou(prediction, box, size)
        return float(iou >= 0.5), {"iou": iou}
    if metric == "vqa":
        answers = meta.get("answers")
        if answers:
            return vqa_accuracy(prediction, answers), {"exact": exact_match(prediction, reference)}
        return exact_match(prediction, reference), {}
    return exact_match(prediction, reference), {}


def metric_for(record: dict[str, Any], metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}")
    if metric != "auto":
        return metric
    return AUTO_METRIC.get(str((record.get("meta") or {}).get("task")), "exact")


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
    generated; an empty file or a limit under 1 is an error."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    items = records_to_score(sources, limit=limit)
    task_limits = GenerationDefaults.of(model.model_config).task_max_new_tokens
    predictions: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        predictions += _predict_batch(model, chunk, metric, task_limits, extra_tokens)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(items)), len(items))
    return EvalReport(predictions)


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
        image = record.get("image")
        path = source.image_path(image) if image else None
        conversations.append(turns[:-1])
        images.append([] if path is None else [open_image(path)])
        references.append(turns[-1]["value"])
        paths.append(path)
    inputs = model.processor(conversations, images, generation=True).to(model.device)
    with torch.no_grad():
        output = generate(model, **inputs, max_new_tokens=max_new_tokens)
    results = []
    for (source, record), text, reference, image in zip(
        chunk, output.texts, references, paths, strict=True
    ):
        chosen = metric_for(record, metric)
        value, extra = score(chosen, text.strip(), record)
        question = next(
            (t["value"] for t in reversed(record["conversations"][:-1]) if t["from"] == "human"),
            "",
        )
        results.append(
            Prediction(
                str(record.get("id", "")),
                _task(source, record),
                chosen,
                question,
                reference,
                text.strip(),
                value,
                image,
                extra,
            )
        )
    return results
