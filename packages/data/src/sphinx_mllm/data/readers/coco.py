"""COCO-format annotation files: instances, captions and person keypoints (and the COCO-style
layout sets, PubLayNet and DocLayNet). Images and categories are indexed; annotations are
streamed and validated one by one (required keys, a box inside its image, a known image and
category); a bad record raises naming the file and the record, or is skipped and counted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sphinx_mllm.data.readers.json_stream import AnnotationFormatError, iter_array
from sphinx_mllm.data.readers.problems import Problems

BOX_TOLERANCE = 1.0  # pixels a box may extend past its image (rounding in the public files)
PUBLAYNET_CATEGORIES = ("text", "title", "list", "table", "figure")
DOCLAYNET_CATEGORIES = (
    "Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header", "Picture",
    "Section-header", "Table", "Text", "Title",
)  # fmt: skip


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class CocoObject:
    """One annotation: its box in pixels (x, y, w, h), category, and keypoints if any."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: bool = False
    keypoints: tuple[float, ...] | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return x, y, x + w, y + h


@dataclass(frozen=True)
class CocoCaption:
    id: int
    image_id: int
    caption: str


class CocoFile:
    """One COCO-format file: `images` and `categories` indexed, annotations streamed."""

    def __init__(self, path: str | Path, problems: Problems | None = None) -> None:
        self.path = Path(path)
        self.problems = problems or Problems()
        if not self.path.is_file():
            raise FileNotFoundError(f"No annotation file at {self.path}")
        self.images = {image.id: image for image in self._read_images()}
        self.categories = {int(c["id"]): c for c in self._records("categories", ("id", "name"))}

    def _records(self, key: str, required: tuple[str, ...]) -> Iterator[dict]:
        for index, record in enumerate(iter_array(self.path, key)):
            where = f"{self.path} {key}[{index}]"
            if not isinstance(record, dict):
                self.problems.report(where, f"not an object but {type(record).__name__}")
                continue
            missing = [name for name in required if name not in record]
            if missing:
                self.problems.report(where, f"missing keys {missing}")
                continue
            yield record

    def _read_images(self) -> Iterator[CocoImage]:
        for record in self._records("images", ("id", "file_name", "width", "height")):
            try:
                yield CocoImage(
                    int(record["id"]),
                    str(record["file_name"]),
                    int(record["width"]),
                    int(record["height"]),
                )
            except (TypeError, ValueError):
                self.problems.report(
                    f"{self.path} image {record.get('id')!r}", "width, height or id is not a number"
                )

    def category_name(self, category_id: int) -> str:
        return str(self.categories[category_id]["name"])

    def keypoint_names(self) -> list[str]:
        """The keypoint names of the (first) category that has them, e.g. COCO's person."""
        for category in self.categories.values():
            if category.get("keypoints"):
                return [str(name) for name in category["keypoints"]]
        raise AnnotationFormatError(f"{self.path}: no category lists keypoints")

    def objects(self) -> Iterator[CocoObject]:
        """Every valid annotation with a box, in file order."""
        for record in self._records("annotations", ("id", "image_id", "bbox")):
            where = f"{self.path} annotation {record['id']!r}"
            parsed = self._parse_object(record, where)
            if parsed is not None:
                yield parsed

    def _parse_object(self, record: dict, where: str) -> CocoObject | None:
        bbox = record["bbox"]
        if not (
            isinstance(bbox, list | tuple)
            and len(bbox) == 4
            and all(isinstance(v, int | float) for v in bbox)
        ):
            self.problems.report(where, f"bbox is not 4 numbers: {bbox!r}")
            return None
        image = self.images.get(record["image_id"])
        if image is None:
            self.problems.report(where, f"image_id {record['image_id']!r} is not in the images")
            return None
        category = record.get("category_id", 0)
        if self.categories and category not in self.categories:
            self.problems.report(where, f"category_id {category!r} is not in the categories")
            return None
        x, y, w, h = (float(v) for v in bbox)
        if (
            w < 0
            or h < 0
            or x < -BOX_TOLERANCE
            or y < -BOX_TOLERANCE
            or x + w > image.width + BOX_TOLERANCE
            or y + h > image.height + BOX_TOLERANCE
        ):
            self.problems.report(
                where, f"box {list(bbox)} is outside its {image.width}x{image.height} image"
            )
            return None
        keypoints = record.get("keypoints")
        if keypoints is not None and (
            len(keypoints) % 3 or not all(isinstance(v, int | float) for v in keypoints)
        ):
            self.problems.report(where, "keypoints are not (x, y, v) triples")
            return None
        return CocoObject(
            id=int(record["id"]),
            image_id=int(record["image_id"]),
            category_id=int(category),
            bbox=(x, y, w, h),
            iscrowd=bool(record.get("iscrowd", 0)),
            keypoints=tuple(float(v) for v in keypoints) if keypoints is not None else None,
        )

    def objects_by_image(self) -> dict[int, list[CocoObject]]:
        """Annotations grouped by image (COCO files do not order them by image)."""
        grouped: dict[int, list[CocoObject]] = {}
        for item in self.objects():
            grouped.setdefault(item.image_id, []).append(item)
        return grouped

    def captions(self) -> Iterator[CocoCaption]:
        for record in self._records("annotations", ("image_id", "caption")):
            if record["image_id"] not in self.images:
                self.problems.report(
                    f"{self.path} caption {record.get('id')!r}",
                    f"image_id {record['image_id']!r} is not in the images",
                )
                continue
            yield CocoCaption(
                int(record.get("id", 0)), int(record["image_id"]), str(record["caption"]).strip()
            )


def layout_category_names(coco: CocoFile) -> dict[int, str]:
    """Category id -> name for PubLayNet / DocLayNet files, matched by name (exports re-index
    DocLayNet's ids), refusing a file whose categories are neither set."""
    names = {category_id: coco.category_name(category_id) for category_id in coco.categories}
    known = {name.lower() for name in (*PUBLAYNET_CATEGORIES, *DOCLAYNET_CATEGORIES)}
    unknown = sorted(name for name in names.values() if name.lower() not in known)
    if unknown:
        raise AnnotationFormatError(
            f"{coco.path}: layout categories {unknown} are neither PubLayNet's nor DocLayNet's"
        )
    return names
