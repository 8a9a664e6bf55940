"""COCO-format annotation files: instances, captions and person keypoints (and the COCO-style
layout sets, PubLayNet and DocLayNet). Images and categories are indexed; annotations are read
record by record and validated with the readers' shared checks (`checks`: integer ids, a box
with an area inside its image, a known image and category, an image name under the image root);
a bad record raises naming the file and the record, or is skipped and counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers import checks
from sphinx_mllm.data.readers.json_stream import AnnotationFormatError, iter_array, iter_arrays
from sphinx_mllm.data.readers.problems import Problems

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


@dataclass(frozen=True, slots=True)
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
    """One COCO-format file: its images indexed when it is opened, its categories when they are
    first needed, its annotations read and checked when asked for.

    Image names must stay under the image root unless `allow_outside`. An id given to two
    images, categories or annotations makes every record with it bad: the annotations of a
    duplicated image could belong to either."""

    def __init__(
        self, path: str | Path, problems: Problems | None = None, *, allow_outside: bool = False
    ) -> None:
        self.path = Path(path)
        self.problems = problems or Problems()
        self.allow_outside = allow_outside
        if not self.path.is_file():
            raise FileNotFoundError(f"No annotation file at {self.path}")
        self.duplicate_image_ids: set[int] = set()
        images = iter_array(self.path, "images")
        self.images = self._index("images", images, self._parse_image, self.duplicate_image_ids)
        self._categories: dict[int, dict] | None = None
        self._has_categories = False  # caption files have none

    @property
    def categories(self) -> dict[int, dict]:
        """Category id -> its record (empty for a file without categories)."""
        if self._categories is None:
            for _, elements in iter_arrays(self.path, ("categories",)):
                self._load_categories(elements)
            if self._categories is None:
                self._load_categories((), present=False)
        return self._categories

    def _load_categories(self, elements: Iterable[Any], *, present: bool = True) -> None:
        self._has_categories = present
        self._categories = self._index("categories", elements, self._parse_category, set())

    def _index(
        self,
        key: str,
        elements: Iterable[Any],
        parse: Callable[[Any], tuple[int, Any]],
        duplicates: set[int],
    ) -> dict[int, Any]:
        """Id -> parsed record for the elements of the array `key`. The records of an id given
        twice are all reported (the first of them too) and left out; the id is added to
        `duplicates`."""
        parsed: dict[int, Any] = {}
        first: dict[int, str] = {}
        for index, record in enumerate(elements):
            where = f"{self.path} {key}[{index}]"
            item = self.problems.attempt(where, parse, record)
            if item is None:
                continue
            item_id, value = item
            if item_id in first:
                reason = f"{key[:-1]} id {item_id} is given twice"
                if item_id not in duplicates:
                    duplicates.add(item_id)
                    self.problems.report(first[item_id], reason)
                self.problems.report(where, reason)
                continue
            first[item_id] = where
            parsed[item_id] = value
        return {item_id: value for item_id, value in parsed.items() if item_id not in duplicates}

    def _parse_image(self, record: Any) -> tuple[int, CocoImage]:
        record = checks.record_fields(record, ("id", "file_name", "width", "height"))
        width, height = checks.image_size(record["width"], record["height"])
        image_id = checks.integer(record["id"], "id")
        name = checks.image_name(record["file_name"], self.allow_outside)
        return image_id, CocoImage(image_id, name, width, height)

    def _parse_category(self, record: Any) -> tuple[int, dict]:
        record = checks.record_fields(record, ("id", "name"))
        checks.text(record["name"], "name")
        return checks.integer(record["id"], "id"), record

    def category_name(self, category_id: int) -> str:
        if category_id not in self.categories:
            raise AnnotationFormatError(
                f"{self.path}: category_id {category_id!r} is not in the categories"
            )
        return str(self.categories[category_id]["name"])

    def keypoint_names(self) -> list[str]:
        """The keypoint names of the (first) category that has them, e.g. COCO's person."""
        for category in self.categories.values():
            if category.get("keypoints"):
                return list(checks.texts(category["keypoints"], "keypoints"))
        raise AnnotationFormatError(f"{self.path}: no category lists keypoints")

    def objects(self) -> Iterator[CocoObject]:
        """Every valid annotation with a box, in file order. COCO's files put the categories
        after the annotations, so both are read in one pass over the file, and the objects are
        checked against the categories and yielded when it is over."""
        parsed: list[tuple[str, CocoObject]] = []
        found = False
        for key, elements in iter_arrays(self.path, ("annotations", "categories")):
            if key == "categories":
                if self._categories is None:
                    self._load_categories(elements)
                continue
            found = True
            for index, record in enumerate(elements):
                where = f"{self.path} annotations[{index}]"
                item = self.problems.attempt(where, self._parse_object, record)
                if item is not None:
                    parsed.append((where, item))
        if not found:
            raise AnnotationFormatError(f"{self.path}: no top-level key 'annotations'")
        ids = Counter(item.id for _, item in parsed)
        for where, item in parsed:
            if self.problems.attempt(where, self._check_object, item, ids[item.id]):
                yield item

    def _check_object(self, item: CocoObject, id_count: int) -> bool:
        if id_count > 1:
            raise checks.RecordProblem(f"annotation id {item.id} is given twice")
        if item.category_id not in self.categories:
            where = "categories" if self._has_categories else "file, which has no categories"
            raise checks.RecordProblem(f"category_id {item.category_id!r} is not in the {where}")
        return True

    def _image_of(self, image_id: Any) -> CocoImage:
        image = self.images.get(checks.integer(image_id, "image_id"))
        if image is None:
            duplicated = image_id in self.duplicate_image_ids
            raise checks.RecordProblem(
                f"image_id {image_id!r} is "
                + ("given to two images" if duplicated else "not in the images")
            )
        return image

    def _parse_object(self, record: Any) -> CocoObject:
        """The object of an annotation, checked but for its category (see `_check_object`)."""
        record = checks.record_fields(record, ("id", "image_id", "category_id", "bbox"))
        image = self._image_of(record["image_id"])
        iscrowd = record.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, float):
            raise checks.RecordProblem(f"iscrowd is not 0 or 1: {checks.shown(iscrowd)}")
        keypoints = record.get("keypoints")
        if keypoints is not None:
            if not isinstance(keypoints, list) or len(keypoints) % 3:
                raise checks.RecordProblem("keypoints are not (x, y, v) triples")
            keypoints = tuple(checks.number(v, "keypoints") for v in keypoints)
        return CocoObject(
            id=checks.integer(record["id"], "id"),
            image_id=image.id,
            category_id=checks.integer(record["category_id"], "category_id"),
            bbox=checks.box(record["bbox"], image.size, "xywh", "bbox"),
            iscrowd=bool(iscrowd),
            keypoints=keypoints,
        )

    def objects_by_image(self) -> dict[int, list[CocoObject]]:
        """Annotations grouped by image (COCO files do not order them by image)."""
        grouped: dict[int, list[CocoObject]] = {}
        for item in self.objects():
            grouped.setdefault(item.image_id, []).append(item)
        return grouped

    def captions(self) -> Iterator[CocoCaption]:
        for index, record in enumerate(iter_array(self.path, "annotations")):
            where = f"{self.path} annotations[{index}]"
            parsed = self.problems.attempt(where, self._parse_caption, record)
            if parsed is not None:
                yield parsed

    def _parse_caption(self, record: Any) -> CocoCaption:
        record = checks.record_fields(record, ("image_id", "caption"))
        image = self._image_of(record["image_id"])
        caption = checks.text(record["caption"], "caption").strip()
        return CocoCaption(checks.integer(record.get("id", 0), "id"), image.id, caption)


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
