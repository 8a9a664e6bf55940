"""Visual Genome region descriptions: a list of `{id: image_id, regions: [{region_id, phrase, x,
y, width, height}]}`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sphinx_mllm.data.readers.json_stream import iter_top_level
from sphinx_mllm.data.readers.problems import Problems


@dataclass(frozen=True)
class Region:
    region_id: int
    image_id: int
    phrase: str
    bbox: tuple[float, float, float, float]  # x y w h in pixels


def read_region_descriptions(
    path: str | Path, problems: Problems | None = None
) -> Iterator[Region]:
    problems = problems or Problems()
    for index, image in enumerate(iter_top_level(path)):
        if not isinstance(image, dict) or "regions" not in image:
            problems.report(f"{path} [{index}]", "missing regions")
            continue
        for region in image["regions"]:
            if not {"region_id", "phrase", "x", "y", "width", "height"} <= set(region):
                problems.report(
                    f"{path} image {image.get('id')} region", "missing region_id, phrase or box"
                )
                continue
            yield Region(
                region_id=int(region["region_id"]),
                image_id=int(region.get("image_id", image.get("id", 0))),
                phrase=str(region["phrase"]).strip(),
                bbox=(
                    float(region["x"]),
                    float(region["y"]),
                    float(region["width"]),
                    float(region["height"]),
                ),
            )
