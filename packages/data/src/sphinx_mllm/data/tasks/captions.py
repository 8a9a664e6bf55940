"""Captioning tasks: SPHINX's short ("Provide a one-sentence caption for the provided image.")
and detailed ("Generate a detailed description about the image.") captions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sphinx_mllm.data.readers.coco import CocoCaption
from sphinx_mllm.data.tasks.base import Sample, TaskBuilder, one_round

SHORT = "Provide a one-sentence caption for the provided image."
DETAILED = "Generate a detailed description about the image."


class Captioning(TaskBuilder):
    """One sample per caption of an image (COCO captions, or any (image, caption) pairs)."""

    def __init__(
        self, name: str, instruction: str, *, images: dict[int, Any] | None = None, **options: Any
    ) -> None:
        self.name = name
        self.default_instruction = instruction
        self.images = images or {}
        super().__init__(**options)

    def samples(self, source: Iterable[CocoCaption]) -> Iterator[Sample]:
        for caption in source:
            image = self.images.get(caption.image_id)
            if image is None:
                self.drop("caption of an unknown image")
                continue
            sample_id = f"{self.name}-{caption.image_id}-{caption.id}"
            prompt = self.instructions.for_sample(sample_id)
            yield Sample(
                sample_id,
                image.file_name,
                one_round(prompt, caption.caption),
                {"image_size": list(image.size)},
            )


def short_caption(**options: Any) -> Captioning:
    """One-sentence captions (COCO captions reader; pass images=CocoFile(...).images)."""
    return Captioning("short_caption", SHORT, **options)


def detailed_caption(**options: Any) -> Captioning:
    """Detailed descriptions (any (image, long caption) source)."""
    return Captioning("detailed_caption", DETAILED, **options)
