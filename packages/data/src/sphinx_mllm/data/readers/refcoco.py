"""RefCOCO, RefCOCO+ and RefCOCOg referring expressions: the refs pickle (`refs(unc).p`,
`refs(google).p`, `refs(umd).p`) with COCO's `instances.json`, or the parquet and JSON exports
(one row per ref with `image_id, split, sentences, bbox`).

The pickle is read by a restricted unpickler that admits only plain containers and scalars: a
pickle referencing any class or function (which is how a pickle runs code) is refused.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers.coco import CocoFile
from sphinx_mllm.data.readers.json_stream import AnnotationFormatError, iter_top_level
from sphinx_mllm.data.readers.problems import Problems

COCO_TRAIN_2014 = "COCO_train2014_{image_id:012d}.jpg"
_EXPORT_KEYS = frozenset({"image_id", "split", "sentences", "bbox"})


@dataclass(frozen=True)
class ReferringExpression:
    """One ref: the object's box (pixels, x y w h) and the sentences that refer to it."""

    ref_id: int
    image_id: int
    file_name: str
    image_size: tuple[int, int]
    split: str
    bbox: tuple[float, float, float, float]
    sentences: tuple[str, ...]
    category_id: int | None = None


class PlainDataUnpickler(pickle.Unpickler):
    """Builds lists, dicts, tuples, strings and numbers; refuses every global (class/function)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"the pickle references {module}.{name}; only plain containers and scalars are admitted"
        )


def load_plain_pickle(path: str | Path) -> Any:
    """A pickle of plain data (Python 2 strings decoded as latin-1), safely."""
    data = Path(path).read_bytes()
    try:
        return PlainDataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise AnnotationFormatError(f"{path}: not a plain-data pickle: {error}") from error


def read_refs_pickle(
    refs_path: str | Path, instances_path: str | Path, problems: Problems | None = None
) -> Iterator[ReferringExpression]:
    """Refs from the pickle, boxes and image sizes from the COCO instances file."""
    problems = problems or Problems()
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise AnnotationFormatError(
            f"{refs_path}: expected a list of refs, got {type(refs).__name__}"
        )
    coco = CocoFile(instances_path, problems)
    boxes = {item.id: item for item in coco.objects()}
    for index, ref in enumerate(refs):
        where = f"{refs_path} ref[{index}]"
        if not isinstance(ref, dict) or not {
            "ref_id",
            "ann_id",
            "image_id",
            "split",
            "sentences",
        } <= set(ref):
            problems.report(where, "missing ref_id, ann_id, image_id, split or sentences")
            continue
        annotation, image = boxes.get(ref["ann_id"]), coco.images.get(ref["image_id"])
        if annotation is None or image is None:
            problems.report(
                where,
                f"ann_id {ref['ann_id']!r} or image_id {ref['image_id']!r} not in {instances_path}",
            )
            continue
        sentences = tuple(
            str(s["sent"] if isinstance(s, dict) else s).strip() for s in ref["sentences"]
        )
        yield ReferringExpression(
            ref_id=int(ref["ref_id"]),
            image_id=image.id,
            file_name=str(ref.get("file_name") or image.file_name),
            image_size=image.size,
            split=str(ref["split"]),
            bbox=annotation.bbox,
            sentences=sentences,
            category_id=annotation.category_id,
        )


def _rows_from_export(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError as error:
            raise ImportError(
                "Reading parquet exports needs pyarrow: pip install 'sphinx-data[parquet]'"
            ) from error
        table = parquet.ParquetFile(path)
        for batch in table.iter_batches():
            yield from batch.to_pylist()
    else:
        yield from iter_top_level(path)


def read_refs_export(
    path: str | Path,
    *,
    image_sizes: dict[int, tuple[int, int]] | None = None,
    file_pattern: str = COCO_TRAIN_2014,
    problems: Problems | None = None,
) -> Iterator[ReferringExpression]:
    """Refs from a parquet or JSON export (one row per ref). Rows without `width`/`height` take
    the image size from `image_sizes` (e.g. a COCO instances file's images)."""
    path = Path(path)
    problems = problems or Problems()
    for index, row in enumerate(_rows_from_export(path)):
        if not isinstance(row, dict) or not row.keys() >= _EXPORT_KEYS:
            problems.report(f"{path} row {index}", "missing image_id, split, sentences or bbox")
            continue
        image_id = int(row["image_id"])
        size = (
            (row["width"], row["height"])
            if "width" in row and "height" in row
            else (image_sizes or {}).get(image_id)
        )
        bbox = row["bbox"]
        if size is None:
            problems.report(
                f"{path} row {index}", f"no width/height and no image size for image {image_id}"
            )
            continue
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            problems.report(f"{path} row {index}", f"bbox is not 4 numbers: {bbox!r}")
            continue
        sentences = tuple(
            [
                str(s.get("sent", s.get("raw", "")) if isinstance(s, dict) else s).strip()
                for s in row["sentences"]
            ]
        )
        yield ReferringExpression(
            int(row.get("ref_id", index)),
            image_id,
            str(row.get("file_name") or file_pattern.format(image_id=image_id)),
            (int(size[0]), int(size[1])),
            str(row["split"]),
            (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
            sentences,
            row.get("category_id"),
        )
