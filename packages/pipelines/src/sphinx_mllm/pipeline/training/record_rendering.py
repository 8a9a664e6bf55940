"""Records read back from a `RecordIndex` made into training examples, as `TrainingData` makes
them: rendered by the model's processor (a batch at a time), fitted to the sequence budget with
sphinx-data's `fit_to_budget` (never cut inside an image span), and each image decoded into its
views. Runs in `DataLoader` workers, so every failure is raised as a `RecordLoadError` (one
argument: the worker re-raises it in the main process as it is) naming file, line and record, or,
with `on_error="skip"`, returned as a (reason, where) drop for the caller to count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sphinx_mllm.data.budget import fit_to_budget
from sphinx_mllm.data.readers.llava import llava_images
from sphinx_mllm.data.templates import ConversationError
from sphinx_mllm.pipeline.images import ImageFileError, open_image
from sphinx_mllm.pipeline.processor import SphinxProcessor
from sphinx_mllm.pipeline.training.data import DataSource, Example
from sphinx_mllm.pipeline.training.record_index import RecordLoadError

UNRENDERABLE = "conversation cannot be rendered"  # the reasons TrainingData counts drops by
UNREADABLE_IMAGE = "missing or unreadable image"

Drop = tuple[str, str]  # (reason, where)


@dataclass
class Rendered:
    """The example of each record (None where it was dropped), why each drop was made, and how
    many examples the budget cut."""

    examples: list[Example | None]
    drops: list[Drop]
    truncated: int


@dataclass(frozen=True)
class LoadedRecord:
    """A record read back, its source, and how errors name it (file, line, id)."""

    record: dict[str, Any]
    source: DataSource
    where: str


def render_records(
    processor: SphinxProcessor,
    loaded: Sequence[LoadedRecord],
    *,
    max_length: int,
    on_error: str,
) -> Rendered:
    """Each record rendered and fitted; dropped where it does not render (`on_error="skip"`)
    or the budget leaves it no answer."""
    drops: list[Drop] = []
    truncated = 0
    samples = _render(processor, loaded, on_error, drops)
    visual = processor.num_visual_tokens()
    examples: list[Example | None] = []
    for item, sample in zip(loaded, samples, strict=True):
        if sample is None:
            examples.append(None)
            continue
        fitted = fit_to_budget(sample, visual, max_length)
        if fitted.dropped:
            drops.append((fitted.drop_reason.value, item.where))
            examples.append(None)
            continue
        truncated += int(fitted.truncated)
        record = item.record
        images = [item.source.image_path(name) for name in llava_images(record)]
        examples.append(
            Example(
                list(fitted.input_ids),
                list(fitted.labels),
                images[: len(fitted.image_spans)],
                str((record.get("meta") or {}).get("task", item.source.name)),
                fitted.length,
                str(record.get("id", "")),
            )
        )
    return Rendered(examples, drops, truncated)


def _render(processor: SphinxProcessor, loaded: Sequence[LoadedRecord], on_error: str, drops):
    conversations = [item.record["conversations"] for item in loaded]
    counts = [len(llava_images(item.record)) for item in loaded]
    wheres = [item.where for item in loaded]
    try:
        return processor.render_batch(conversations, num_images=counts, sample_ids=wheres)
    except ConversationError as error:
        if on_error == "raise":
            raise RecordLoadError(str(error)) from error
    samples = []  # find the bad ones one by one
    for conversation, count, where in zip(conversations, counts, wheres, strict=True):
        try:
            samples.append(processor.render(conversation, num_images=count, sample_id=where))
        except ConversationError:
            drops.append((UNRENDERABLE, where))
            samples.append(None)
    return samples


def load_views(
    processor: SphinxProcessor, example: Example, where: str, on_error: str, drops: list[Drop]
) -> list[torch.Tensor] | None:
    """The views of each image of `example`, decoded now; None (a drop) for an image that is
    missing or does not decode, under `on_error="skip"`."""
    try:
        return [processor.preprocess(open_image(path)) for path in example.images]
    except ImageFileError as error:
        if on_error == "raise":
            raise RecordLoadError(f"{where}: {error}") from error
        drops.append((UNREADABLE_IMAGE, where))
        return None
