"""Training data for a `SphinxModel`: LLaVA-format conversation files rendered once by the
model's processor, fitted to the sequence budget (never cut inside an image span), batched
SPHINX's way (each global batch of one data type, length-grouped) and collated by the processor
into padded tensors with each image's views.

    sources = [DataSource.parse("train.jsonl:2", images="data/")]
    data = TrainingData.build(model.processor, sources, max_length=512)
    batches = data.batches(global_batch_size=32, seed=0)
    batch = data.collate(next(iter(batches.resume(0, 0)))[1])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, StrictBool, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from sphinx_mllm.data.budget import fit_to_budget
from sphinx_mllm.data.image_paths import image_path_under
from sphinx_mllm.data.mixtures import SphinxBatches, TypedSource
from sphinx_mllm.data.readers import Problems
from sphinx_mllm.data.readers.llava import read_llava
from sphinx_mllm.data.templates import IGNORE_INDEX, ConversationError
from sphinx_mllm.pipeline.config import CONFIG, Number, config_errors
from sphinx_mllm.pipeline.images import ImageFileError, check_image, open_image
from sphinx_mllm.pipeline.processor import SphinxProcessor

IMAGE_TEXT, TEXT_ONLY = "image-text", "text-only"
RENDER_CHUNK = 256


@config_errors(label=lambda path=None, *args, **kwargs: f"data {path}:")
@pydantic_dataclass(frozen=True, config=CONFIG)
class DataSource:
    """One conversation file (LLaVA JSON or JSONL), its mixture weight (the ratio it is
    subsampled to per epoch; > 1 repeats it) and the folder its image paths are relative to.
    Image paths that are absolute or leave that folder are refused unless
    `images_outside_root`. Checked when made (a `ConfigError` names the file and the field)."""

    path: Path
    weight: Annotated[Number, Field(gt=0)] = 1.0
    images: Path | None = None
    images_outside_root: StrictBool = False

    @field_validator("images", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @classmethod
    def parse(cls, spec: str, images: str | Path | None = None) -> DataSource:
        """`FILE` or `FILE:WEIGHT` (as `--data` takes it)."""
        return cls(**cls.spec_fields(spec), images=Path(images).expanduser() if images else None)

    @staticmethod
    def spec_fields(spec: str) -> dict[str, Path | float]:
        """The path and weight of a `FILE` or `FILE:WEIGHT` spec."""
        path, weight = spec, 1.0
        head, _, tail = spec.rpartition(":")
        if head and tail.replace(".", "", 1).isdigit():
            path, weight = head, float(tail)
        return {"path": Path(path).expanduser(), "weight": weight}

    @property
    def image_root(self) -> Path:
        return self.images or self.path.parent

    def image_path(self, name: object) -> Path:
        """Where the image a record names lives (a name leaving the root is refused)."""
        return image_path_under(self.image_root, name, allow_outside=self.images_outside_root)

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass
class Example:
    """One rendered conversation: ids and labels with one placeholder id per image, the images
    it needs, its task and its length once images are expanded."""

    input_ids: list[int]
    labels: list[int]
    images: list[Path]
    task: str
    length: int
    record_id: str

    @property
    def num_label_tokens(self) -> int:
        """Positions whose next token carries a label (what `Batch.num_label_tokens` counts)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class Batch:
    """Collated tensors for `SphinxModel.forward`, and what they hold."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: list[torch.Tensor] | None
    tasks: list[str]
    images_per_row: list[int]

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def split(self, parts: int) -> list[Batch]:
        """`parts` consecutive micro-batches (for gradient accumulation or data-parallel ranks)."""
        size = -(-len(self.tasks) // parts)
        chunks = []
        for start in range(0, len(self.tasks), size):
            end = start + size
            pixels = None
            if self.pixel_values is not None:
                pixels = self.pixel_values[self._image_start(start) : self._image_start(end)]
            chunks.append(
                Batch(
                    self.input_ids[start:end],
                    self.attention_mask[start:end],
                    self.labels[start:end],
                    pixels or None,
                    self.tasks[start:end],
                    self.images_per_row[start:end],
                )
            )
        return chunks

    def _image_start(self, row: int) -> int:
        return sum(self.images_per_row[:row])


@dataclass
class DataReport:
    """What loading kept and dropped, by source and reason."""

    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0

    def summary(self) -> str:
        kept = ", ".join(f"{name} {count}" for name, count in sorted(self.kept.items()))
        lines = [f"data: kept {sum(self.kept.values())} ({kept}); truncated {self.truncated}"]
        if self.dropped:
            dropped = ", ".join(f"{why} {count}" for why, count in sorted(self.dropped.items()))
            lines.append(f"data: dropped {sum(self.dropped.values())} ({dropped})")
        return "\n".join(lines)


class TrainingData:
    """Rendered examples of every source, and how they are batched and collated for a model."""

    def __init__(
        self, processor: SphinxProcessor, examples: dict[str, list[Example]], sources, report
    ) -> None:
        self.processor = processor
        self.examples = examples
        self.sources = sources
        self.report = report
        self._views: dict[Path, torch.Tensor] = {}
        self._typed: dict[str, tuple[str, list[int]]] = {}  # typed source -> (source, items)

    @classmethod
    def build(
        cls,
        processor: SphinxProcessor,
        sources: Sequence[DataSource],
        *,
        max_length: int = 1024,
        on_error: str = "raise",
    ) -> TrainingData:
        """Read, render and budget every source, and decode every image once, so that a bad
        record or image stops the run now, naming it, rather than mid-training;
        `on_error="skip"` drops and counts such records instead."""
        if not isinstance(processor, SphinxProcessor):
            raise TypeError(
                f"TrainingData.build takes the model's processor (model.processor), got "
                f"{type(processor).__name__}"
            )
        if processor.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer, so conversations cannot be rendered; set "
                "tokenizer.source in its config (e.g. 'demo' or a tokenizer directory)"
            )
        report = DataReport()
        examples: dict[str, list[Example]] = {}
        visual = processor.num_visual_tokens()
        checked_images: dict[Path, str | None] = {}
        for source in sources:
            if not source.path.is_file():
                raise FileNotFoundError(f"No data file at {source.path}")
            kept: list[Example] = []
            problems = Problems(on_error)
            records = list(
                read_llava(source.path, problems, allow_outside=source.images_outside_root)
            )
            if not records and not problems.total:
                raise ValueError(f"{source.path}: the file holds no records")
            records = with_readable_images(source, records, problems, checked_images)
            for start in range(0, len(records), RENDER_CHUNK):
                chunk = records[start : start + RENDER_CHUNK]
                kept.extend(_render(processor, source, chunk, visual, max_length, report, problems))
            for reason, count in problems.skipped.items():
                report.dropped[f"{source.name}: {reason}"] += count
            if not kept:
                raise ValueError(f"{source.path}: no usable record ({report.summary()})")
            examples[source.name] = kept
            report.kept[source.name] = len(kept)
        return cls(processor, examples, list(sources), report)

    def batches(self, global_batch_size: int, *, seed: int = 0) -> SphinxBatches:
        """SPHINX batching: each global batch of one data type, length-grouped, deterministic in
        (seed, epoch); each source subsampled (or repeated) by its weight."""
        typed = []
        for source in self.sources:
            items = self.examples[source.name]
            for data_type in (IMAGE_TEXT, TEXT_ONLY):
                wanted = data_type == IMAGE_TEXT
                indices = [i for i, ex in enumerate(items) if bool(ex.images) == wanted]
                if not indices:
                    continue
                name = f"{source.name}/{data_type}"
                lengths = [items[i].length for i in indices]
                typed.append(TypedSource(name, data_type, lengths, ratio=source.weight))
                self._typed[name] = (source.name, indices)
        return SphinxBatches(typed, global_batch_size, seed=seed)

    def example(self, typed_name: str, item: int) -> Example:
        """Item `item` of a typed source of `batches()` (`"train/image-text"`)."""
        source, indices = self._typed[typed_name]
        return self.examples[source][indices[item]]

    def collate(self, items: Sequence[tuple[str, int]]) -> Batch:
        """The processor's padded tensors for a batch's examples (right padding), with each
        image's views."""
        examples = [self.example(name, item) for name, item in items]
        inputs = self.processor.collate(
            [(example.input_ids, example.labels) for example in examples],
            [[self.views(path) for path in example.images] for example in examples],
        )
        return Batch(
            inputs.input_ids,
            inputs.attention_mask,
            inputs.labels,
            inputs.pixel_values,
            [example.task for example in examples],
            inputs.images_per_row,
        )

    def views(self, path: Path) -> torch.Tensor:
        """The views of the image at `path` (cached: demo images are small)."""
        if path not in self._views:
            self._views[path] = self.processor.preprocess(open_image(path))
        return self._views[path]


def _render(
    processor: SphinxProcessor,
    source: DataSource,
    records,
    visual: int,
    max_length: int,
    report,
    problems: Problems,
) -> list:
    ids = [f"{source.path}:{record.get('id', i)}" for i, record in enumerate(records)]
    try:
        samples = processor.render_batch(
            [record["conversations"] for record in records],
            num_images=[len(_images(record)) for record in records],
            sample_ids=ids,
        )
    except ConversationError:
        if problems.on_error == "raise":
            raise
        samples = []  # find the bad ones one by one, and count them
        for record, sample_id in zip(records, ids, strict=True):
            try:
                samples.append(
                    processor.render(
                        record["conversations"],
                        num_images=len(_images(record)),
                        sample_id=sample_id,
                    )
                )
            except ConversationError:
                problems.skipped["conversation cannot be rendered"] += 1
                samples.append(None)
    kept = []
    for record, sample in zip(records, samples, strict=True):
        if sample is None:
            continue
        fitted = fit_to_budget(sample, visual, max_length)
        if fitted.dropped:
            report.dropped[f"{source.name}: {fitted.drop_reason.value}"] += 1
            continue
        report.truncated += int(fitted.truncated)
        images = [source.image_path(name) for name in _images(record)]
        images = images[: len(fitted.image_spans)]
        kept.append(
            Example(
                list(fitted.input_ids),
                list(fitted.labels),
                images,
                str((record.get("meta") or {}).get("task", source.name)),
                fitted.length,
                str(record.get("id", "")),
            )
        )
    return kept


def _images(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, list) else [image]


def with_readable_images(
    source: DataSource,
    records: list[dict],
    problems: Problems,
    checked: dict[Path, str | None] | None = None,
) -> list:
    """The records whose images all lie under the source's root and decode. Each image file is
    decoded once (a data set's images are shared by many records, and by the task files of one
    data set: pass one `checked` to the calls, path -> why it cannot be used, None if it can)."""
    checked = {} if checked is None else checked
    usable = []
    for index, record in enumerate(records):
        failure = None
        for name in _images(record):
            try:
                path = source.image_path(name)
            except ValueError as error:
                failure = (str(error), "image path outside the image root")
                break
            if path not in checked:
                try:
                    check_image(path)
                    checked[path] = None
                except ImageFileError as error:
                    checked[path] = str(error)
            if checked[path] is not None:
                hint = "" if source.images else " (pass --images ROOT)"
                failure = (f"{checked[path]}{hint}", "missing or unreadable image")
                break
        if failure is None:
            usable.append(record)
        else:
            detail, reason = failure
            problems.report(f"{source.path}: record {record.get('id', index)!r}: {detail}", reason)
    return usable
