"""What every task builder shares: the sample record (LLaVA-style `id`, `image`, `conversations`
plus `meta`), instructions (SPHINX's by default, optional paraphrase pools chosen per sample
deterministically), validation of every record, and counts of what was built and dropped.

A builder turns reader output into samples. It validates each one (one `<image>` placeholder,
in the first human turn, when there is an image; one per image, in human turns, for a
multi-image record; at least one assistant turn; every box or point in the text inside [0, 1])
and caps the boxes of a sample, counting what it drops.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sphinx_mllm.data.readers.problems import OnError, Problems
from sphinx_mllm.data.tasks.geometry import coordinates_out_of_range

IMAGE_TOKEN = "<image>"


@dataclass
class Sample:
    """One training record in the LLaVA format, with metadata (task, source, image size).
    `image` is one file name, or a list of them for a multi-image record (LLaVA's format)."""

    id: str
    image: str | list[str] | None
    conversations: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id}
        if self.image is not None:
            record["image"] = self.image
        record["conversations"] = self.conversations
        record["meta"] = self.meta
        return record


def one_round(question: str, answer: str, with_image: bool = True) -> list[dict[str, str]]:
    """A one-round conversation, the image placeholder first in the question."""
    prompt = f"{IMAGE_TOKEN}\n{question}" if with_image else question
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]


@dataclass(frozen=True)
class Instructions:
    """The instruction of a task: SPHINX's template, or a pool of paraphrases from which each
    sample gets one, chosen by a hash of (seed, sample id): stable across runs and orders."""

    templates: tuple[str, ...]
    seed: int = 0

    def for_sample(self, sample_id: str, **fields: Any) -> str:
        index = 0
        if len(self.templates) > 1:
            digest = hashlib.sha256(f"{self.seed}\0{sample_id}".encode()).digest()
            index = int.from_bytes(digest[:4], "little") % len(self.templates)
        return self.templates[index].format(**fields)


@dataclass
class BuildStats:
    """What a build produced: samples written, and samples and boxes dropped, by reason."""

    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    boxes_dropped: int = 0

    def summary(self) -> str:
        lines = [f"{self.written} records written, {sum(self.dropped.values())} dropped"]
        lines += [f"  dropped: {count} x {reason}" for reason, count in self.dropped.most_common()]
        if self.boxes_dropped:
            lines.append(f"  boxes dropped by the per-sample cap: {self.boxes_dropped}")
        return "\n".join(lines)


class TaskBuilder(ABC):
    """Base class: subclasses implement `samples(source)`; `build` validates and counts."""

    name: str
    default_instruction: str

    def __init__(
        self,
        *,
        instructions: Sequence[str] | None = None,
        seed: int = 0,
        max_boxes: int = 30,
        source_name: str = "",
        on_error: OnError = "raise",
    ) -> None:
        self.instructions = Instructions(tuple(instructions or (self.default_instruction,)), seed)
        self.max_boxes = max_boxes
        self.source_name = source_name
        self.stats = BuildStats()
        self.problems = Problems(on_error)

    @abstractmethod
    def samples(self, source: Iterable[Any]) -> Iterator[Sample]:
        """Unvalidated samples from the reader's records."""

    def build(self, source: Iterable[Any]) -> Iterator[Sample]:
        """Valid samples; invalid ones raise (naming the sample) or are dropped and counted."""
        for sample in self.samples(source):
            sample.meta = {"task": self.name, "source": self.source_name, **sample.meta}
            reason = validate(sample)
            if reason is not None:
                self.problems.report(f"{self.name} sample {sample.id!r}", reason)
                self.stats.dropped[reason] += 1
                continue
            self.stats.written += 1
            yield sample

    def drop(self, reason: str) -> None:
        """Count a record of the source that gives no sample (e.g. no box left)."""
        self.stats.dropped[reason] += 1

    def cap(self, boxes: list[Any]) -> list[Any]:
        """At most `max_boxes` of a sample's boxes, counting the rest."""
        if len(boxes) > self.max_boxes:
            self.stats.boxes_dropped += len(boxes) - self.max_boxes
            return boxes[: self.max_boxes]
        return boxes


def validate(sample: Sample) -> str | None:
    """Why a sample is invalid, or None. Runs on every record built: plain loops, no generators."""
    turns = sample.conversations
    for turn in turns:
        if turn.get("from") in ("gpt", "assistant"):
            break
    else:
        return "no assistant turn"
    placeholders = [turn["value"].count(IMAGE_TOKEN) for turn in turns]
    total = sum(placeholders)
    if isinstance(sample.image, list):
        in_replies = any(
            count
            for turn, count in zip(turns, placeholders, strict=True)
            if turn.get("from") != "human"
        )
        if total != len(sample.image) or in_replies:
            return "not one image placeholder per image, in human turns"
    elif sample.image is not None:
        if total != 1 or placeholders[0] != 1:
            return "the image placeholder is not exactly once, in the first human turn"
    elif total:
        return "an image placeholder without an image"
    for turn in turns:
        if not turn["value"].strip():
            return "an empty turn"
    for turn in turns:
        value = turn["value"]
        if "[" in value and coordinates_out_of_range(value):  # no bracket, no coordinate
            return "coordinates outside [0, 1]"
    return None
