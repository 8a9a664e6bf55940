"""Task sources made from the synthetic shape scenes, for the tasks whose public sources have
text the scenes lack: referring expressions ("the red circle", for a category that occurs once
in its image) and grounded captions ("two red circles and a blue square", every phrase with its
boxes)."""

from __future__ import annotations

from collections.abc import Iterator

from sphinx_mllm.data.readers.coco import CocoFile
from sphinx_mllm.data.readers.flickr30k import GroundedCaption, GroundedPhrase
from sphinx_mllm.data.readers.refcoco import ReferringExpression

NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}


def referring_expressions(coco: CocoFile, split: str = "train") -> Iterator[ReferringExpression]:
    """'the <category>' for every object whose category occurs once in its image."""
    for image_id, objects in sorted(coco.objects_by_image().items()):
        image = coco.images[image_id]
        counts: dict[int, int] = {}
        for item in objects:
            counts[item.category_id] = counts.get(item.category_id, 0) + 1
        for item in objects:
            if counts[item.category_id] == 1:
                yield ReferringExpression(
                    ref_id=item.id,
                    image_id=image_id,
                    file_name=image.file_name,
                    image_size=image.size,
                    split=split,
                    bbox=item.bbox,
                    sentences=(f"the {coco.category_name(item.category_id)}",),
                    category_id=item.category_id,
                )


def grounded_captions(coco: CocoFile) -> Iterator[GroundedCaption]:
    """One caption per image naming every category with its count; phrases carry their boxes."""
    for image_id, objects in sorted(coco.objects_by_image().items()):
        image = coco.images[image_id]
        groups: dict[int, list] = {}
        for item in objects:
            groups.setdefault(item.category_id, []).append(item.xyxy)
        pieces, phrases, length = [], [], 0
        for position, (category_id, boxes) in enumerate(sorted(groups.items())):
            name = coco.category_name(category_id)
            count = NUMBER_WORDS.get(len(boxes), str(len(boxes)))
            text = f"{count} {name}{'s' if len(boxes) > 1 else ''}"
            separator = "" if position == 0 else (" and " if position == len(groups) - 1 else ", ")
            pieces.append(separator)
            length += len(separator)
            phrases.append(
                GroundedPhrase(
                    text, category_id, ("shape",), length, length + len(text), tuple(boxes)
                )
            )
            pieces.append(text)
            length += len(text)
        yield GroundedCaption(
            str(image_id), image.file_name, image.size, "".join(pieces) + ".", tuple(phrases)
        )
