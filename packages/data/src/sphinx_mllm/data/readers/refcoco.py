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

from sphinx_mllm.data.readers import checks
from sphinx_mllm.data.readers.coco import CocoFile
from sphinx_mllm.data.readers.json_stream import AnnotationFormatError, iter_top_level
from sphinx_mllm.data.readers.problems import Problems

COCO_TRAIN_2014 = "COCO_train2014_{image_id:012d}.jpg"
_EXPORT_KEYS = ("image_id", "split", "sentences", "bbox")


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
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        LookupError,
        TypeError,
        AttributeError,
        OverflowError,
    ) as error:  # what a corrupt pickle raises, depending on where it is cut or changed
        raise AnnotationFormatError(f"{path}: not a plain-data pickle: {error}") from error


def read_refs_pickle(
    refs_path: str | Path,
    instances_path: str | Path,
    problems: Problems | None = None,
    *,
    allow_outside: bool = False,
) -> Iterator[ReferringExpression]:
    """Refs from the pickle, boxes and image sizes from the COCO instances file."""
    problems = problems or Problems()
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise AnnotationFormatError(
            f"{refs_path}: expected a list of refs, got {type(refs).__name__}"
        )
    coco = CocoFile(instances_path, problems, allow_outside=allow_outside)
    boxes = {item.id: item for item in coco.objects()}

    def parse(ref: Any) -> ReferringExpression:
        ref = checks.record_fields(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"))
        ann_id = checks.integer(ref["ann_id"], "ann_id")
        image_id = checks.integer(ref["image_id"], "image_id")
        annotation, image = boxes.get(ann_id), coco.images.get(image_id)
        if annotation is None or image is None:
            raise checks.RecordProblem(
                f"ann_id {ann_id} or image_id {image_id} is not in {instances_path}"
            )
        if annotation.image_id != image_id:
            raise checks.RecordProblem(
                f"ann_id {ann_id} is an object of image {annotation.image_id}, not {image_id}"
            )
        file_name = ref.get("file_name") or image.file_name
        return ReferringExpression(
            ref_id=checks.integer(ref["ref_id"], "ref_id"),
            image_id=image_id,
            file_name=checks.image_name(file_name, allow_outside),
            image_size=image.size,
            split=checks.text(ref["split"], "split"),
            bbox=annotation.bbox,
            sentences=_sentences(ref["sentences"], ("sent",)),
            category_id=annotation.category_id,
        )

    for index, ref in enumerate(refs):
        parsed = problems.attempt(f"{refs_path} ref[{index}]", parse, ref)
        if parsed is not None:
            yield parsed


def _sentences(sentences: Any, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The expressions of a ref: a list of strings, or of objects holding the first of `keys`
    (the pickle's {"sent", "raw", "tokens"}); a bare string is not a list of expressions."""
    if not isinstance(sentences, list | tuple):
        raise checks.RecordProblem(
            f"sentences is not a list of expressions but {type(sentences).__name__}: "
            f"{checks.shown(sentences)}"
        )
    expressions = []
    for index, sentence in enumerate(sentences):
        if isinstance(sentence, dict):
            key = next((key for key in keys if key in sentence), None)
            if key is None:
                raise checks.RecordProblem(f"sentences[{index}] has none of the keys {list(keys)}")
            sentence = sentence[key]
        if not isinstance(sentence, str):
            raise checks.RecordProblem(
                f"sentences[{index}] is not a string: {checks.shown(sentence)}"
            )
        expressions.append(sentence.strip())
    return tuple(expressions)


def _rows_from_export(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError as error:
            raise ImportError(
                "Reading parquet exports needs pyarrow: pip install 'sphinx-data[parquet]'"
            ) from error
        try:
            table = parquet.ParquetFile(path)
        except parquet.lib.ArrowException as error:
            raise AnnotationFormatError(f"{path}: not a parquet file ({error})") from error
        for batch in table.iter_batches():
            yield from batch.to_pylist()
    else:
        yield from iter_top_level(path, "array")


def read_refs_export(
    path: str | Path,
    *,
    image_sizes: dict[int, tuple[int, int]] | None = None,
    file_pattern: str = COCO_TRAIN_2014,
    problems: Problems | None = None,
    allow_outside: bool = False,
) -> Iterator[ReferringExpression]:
    """Refs from a parquet or JSON export (one row per ref). Rows without `width`/`height` take
    the image size from `image_sizes` (e.g. a COCO instances file's images)."""
    path = Path(path)
    problems = problems or Problems()
    checks.image_pattern(file_pattern, "file pattern")

    def parse(row: Any, index: int) -> ReferringExpression:
        row = checks.record_fields(row, _EXPORT_KEYS)
        image_id = checks.integer(row["image_id"], "image_id")
        if "width" in row and "height" in row:
            size = checks.image_size(row["width"], row["height"])
        elif image_id in (image_sizes or {}):
            size = (image_sizes or {})[image_id]
        else:
            raise checks.RecordProblem(f"no width/height and no image size for image {image_id}")
        category = row.get("category_id")
        file_name = row.get("file_name")
        return ReferringExpression(
            checks.integer(row.get("ref_id", index), "ref_id"),
            image_id,
            checks.image_name(file_name, allow_outside)
            if file_name
            else checks.image_from_pattern(file_pattern, image_id, allow_outside),
            size,
            checks.text(row["split"], "split"),
            checks.box(row["bbox"], size, "xywh", "bbox"),
            _sentences(row["sentences"], ("sent", "raw")),
            None if category is None else checks.integer(category, "category_id"),
        )

    for index, row in enumerate(_rows_from_export(path)):
        parsed = problems.attempt(f"{path} row {index}", parse, row, index)
        if parsed is not None:
            yield parsed
