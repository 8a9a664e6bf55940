"""Grounding tasks: referring expression comprehension (REC: expression -> box), region
captioning (REG: box -> expression), and grounded captions (a caption whose phrases carry
their boxes), with SPHINX's instructions.

`meta` keeps the ground truth of the metrics, in pixels of the original image: REC the
referent's `bbox_xyxy`; grounded captions `objects` ``{phrase: [[x1, y1, x2, y2]]}``, every box
of every grounded phrase, the per-phrase cap notwithstanding (phrases written alike share one
entry)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sphinx_mllm.data.boxes import GroundedBoxes, format_grounded_text, normalize_box
from sphinx_mllm.data.readers.flickr30k import GroundedCaption
from sphinx_mllm.data.readers.refcoco import ReferringExpression
from sphinx_mllm.data.tasks.base import Sample, TaskBuilder, one_round
from sphinx_mllm.data.tasks.geometry import BoxWriter

REC = (
    "Please provide the bounding box coordinate of the region this sentence describes: "
    "{expression}."
)
REG = "Please provide a short description for this region: {box}."
GROUNDED_CAPTION = (
    "Describe the image concisely. Include the bounding box for each mentioned object."
)


class BoxTask(TaskBuilder):
    """A builder that writes boxes, in a style and frame of the codec."""

    def __init__(self, *, style: str = "sphinx", frame: str = "padded", **options: Any) -> None:
        super().__init__(**options)
        self.writer = BoxWriter(style, frame)


class ReferringComprehension(BoxTask):
    """One sample per (ref, sentence): the expression in, the box out."""

    name = "rec"
    default_instruction = REC

    def samples(self, source: Iterable[ReferringExpression]) -> Iterator[Sample]:
        for ref in source:
            xyxy = self.writer.from_xywh(ref.bbox)  # once per ref: its sentences share the box
            box = self.writer.boxes([xyxy], ref.image_size)
            for index, sentence in enumerate(ref.sentences):
                expression = sentence.rstrip(" .")
                if not expression:
                    self.drop("empty expression")
                    continue
                sample_id = f"rec-{ref.ref_id}-{index}"
                prompt = self.instructions.for_sample(sample_id, expression=expression)
                meta = {
                    "image_size": list(ref.image_size),
                    "bbox_xyxy": list(xyxy),
                    "split": ref.split,
                }
                yield Sample(sample_id, ref.file_name, one_round(prompt, box), meta)


class RegionCaptioning(BoxTask):
    """One sample per (ref or region, sentence): the box in, the expression out."""

    name = "reg"
    default_instruction = REG

    def samples(self, source: Iterable[ReferringExpression]) -> Iterator[Sample]:
        for ref in source:
            box = self.writer.boxes([self.writer.from_xywh(ref.bbox)], ref.image_size)
            for index, sentence in enumerate(ref.sentences):
                if not sentence.strip():
                    self.drop("empty expression")
                    continue
                sample_id = f"reg-{ref.ref_id}-{index}"
                prompt = self.instructions.for_sample(sample_id, box=box)
                yield Sample(
                    sample_id,
                    ref.file_name,
                    one_round(prompt, sentence.strip()),
                    {"image_size": list(ref.image_size)},
                )


class GroundedCaptioning(BoxTask):
    """One sample per caption: every visual phrase followed by its boxes."""

    name = "grounded_caption"
    default_instruction = GROUNDED_CAPTION

    def samples(self, source: Iterable[GroundedCaption]) -> Iterator[Sample]:
        for index, caption in enumerate(source):
            parts: list[Any] = []
            objects: dict[str, list[list[float]]] = {}
            last = 0
            grounded = [phrase for phrase in caption.phrases if phrase.boxes]
            if not grounded:
                self.drop("caption without a grounded phrase")
                continue
            for phrase in grounded:
                parts.append(caption.caption[last : phrase.start])
                boxes = self.cap(
                    [
                        normalize_box(box, caption.image_size, self.writer.frame)
                        for box in phrase.boxes
                    ]
                )
                parts.append(GroundedBoxes(phrase.text, tuple(boxes)))
                objects.setdefault(phrase.text, []).extend(list(box) for box in phrase.boxes)
                last = phrase.end
            parts.append(caption.caption[last:])
            answer = format_grounded_text(parts, self.writer.style)
            sample_id = f"gcap-{caption.image_id}-{index}"
            prompt = self.instructions.for_sample(sample_id)
            meta = {"image_size": list(caption.image_size), "objects": objects}
            yield Sample(sample_id, caption.file_name, one_round(prompt, answer), meta)


def rec(**options: Any) -> ReferringComprehension:
    """REC: "Please provide the bounding box coordinate of the region this sentence describes"."""
    return ReferringComprehension(**options)


def reg(**options: Any) -> RegionCaptioning:
    """REG: "Please provide a short description for this region: [box]."."""
    return RegionCaptioning(**options)


def grounded_caption(**options: Any) -> GroundedCaptioning:
    """Grounded captions from Flickr30k Entities: each mentioned object with its boxes."""
    return GroundedCaptioning(**options)
