"""Visual Genome region descriptions: a list of `{id: image_id, regions: [{region_id, phrase, x,
y, width, height}]}`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers import checks
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
    """Every region with a phrase and a box (the file gives no image sizes: boxes are checked
    for an area and non-negative corners only)."""
    problems = problems or Problems()
    for index, image in enumerate(iter_top_level(path, "array")):
        regions = problems.attempt(f"{path} [{index}]", _regions_of, image)
        for region_index, region in enumerate(regions or ()):
            where = f"{path} image {checks.shown(image.get('id'))} regions[{region_index}]"
            parsed = problems.attempt(where, _region, region, image)
            if parsed is not None:
                yield parsed


def _regions_of(image: Any) -> list:
    image = checks.record_fields(image, ("regions",))
    if not isinstance(image["regions"], list):
        raise checks.RecordProblem(f"regions is not a list: {checks.shown(image['regions'])}")
    return image["regions"]


def _region(region: Any, image: dict) -> Region:
    region = checks.record_fields(region, ("region_id", "phrase", "x", "y", "width", "height"))
    return Region(
        region_id=checks.integer(region["region_id"], "region_id"),
        image_id=checks.integer(region.get("image_id", image.get("id")), "image_id"),
        phrase=checks.text(region["phrase"], "phrase").strip(),
        bbox=checks.box(
            [region[key] for key in ("x", "y", "width", "height")], None, "xywh", "region box"
        ),
    )
