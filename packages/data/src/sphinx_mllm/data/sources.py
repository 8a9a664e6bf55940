"""The source formats `sphinx-data build` reads, and which tasks each can feed.

Each format names the paths it takes and opens them with its reader; each task names the kind
of records it builds from. A task given a format of another kind is an error that lists the
formats it accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers import (
    CocoFile,
    Problems,
    checks,
    layout_category_names,
    read_aokvqa,
    read_flickr30k_entities,
    read_gqa,
    read_llava,
    read_refs_export,
    read_refs_pickle,
    read_textvqa,
    read_vqav2,
)
from sphinx_mllm.data.readers.refcoco import ReferringExpression


@dataclass(frozen=True)
class SourceFormat:
    name: str
    kind: str  # coco, captions, refs, grounded, vqa, multiple_choice, conversations
    paths: tuple[str, ...]  # what each path is, for the help text and errors
    open: Callable[[list[Path], Problems, dict[str, Any]], Iterable[Any]]


def _outside(options: dict[str, Any]) -> bool:
    """Whether image names may leave the image root (`--allow-outside-images`)."""
    return bool(options.get("allow_outside", False))


def _coco(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    return [CocoFile(paths[0], problems, allow_outside=_outside(options))]


def _layout(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    coco = CocoFile(paths[0], problems, allow_outside=_outside(options))
    layout_category_names(coco)  # refuses files whose categories are not layout ones
    return [coco]


def _captions(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    coco = CocoFile(paths[0], problems, allow_outside=_outside(options))
    options["images"] = coco.images
    return coco.captions()


def _refs_pickle(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    refs = read_refs_pickle(paths[0], paths[1], problems, allow_outside=_outside(options))
    return _split(refs, options.pop("split", None))


def _refs_export(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    outside = _outside(options)
    sizes = (
        {i.id: i.size for i in CocoFile(paths[1], problems, allow_outside=outside).images.values()}
        if len(paths) > 1
        else None
    )
    refs = read_refs_export(paths[0], image_sizes=sizes, problems=problems, allow_outside=outside)
    return _split(refs, options.pop("split", None))


def _split(refs: Iterable[ReferringExpression], split: str | None) -> Iterable[ReferringExpression]:
    return refs if split is None else _in_split(refs, split)


def _in_split(refs: Iterable[ReferringExpression], split: str) -> Iterator[ReferringExpression]:
    """The refs of `split`; a split no ref has is an error (a typo would build nothing)."""
    splits = set()
    for ref in refs:
        splits.add(ref.split)
        if ref.split == split:
            yield ref
    if split not in splits:
        raise ValueError(f"--split {split!r}: no ref has it; the refs' splits are {sorted(splits)}")


def _vqav2(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    pattern = options.pop("image_pattern", None)
    extra = {"image_pattern": checks.image_pattern(pattern, "--image-pattern")} if pattern else {}
    return read_vqav2(
        paths[0], paths[1], problems=problems, allow_outside=_outside(options), **extra
    )


def _flickr30k(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    return read_flickr30k_entities(paths[0], problems=problems, allow_outside=_outside(options))


def _gqa(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    return read_gqa(paths[0], problems, allow_outside=_outside(options))


def _textvqa(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    return read_textvqa(paths[0], problems, allow_outside=_outside(options))


def _aokvqa(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    return read_aokvqa(paths[0], problems=problems, allow_outside=_outside(options))


def _llava(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    return read_llava(paths[0], problems, allow_outside=_outside(options))


FORMATS = {
    f.name: f
    for f in (
        SourceFormat("coco", "coco", ("instances.json",), _coco),
        SourceFormat("coco-keypoints", "coco", ("person_keypoints.json",), _coco),
        SourceFormat("publaynet", "coco", ("layout.json",), _layout),
        SourceFormat("doclaynet", "coco", ("layout.json",), _layout),
        SourceFormat("coco-captions", "captions", ("captions.json",), _captions),
        SourceFormat("refcoco-pickle", "refs", ("refs(unc).p", "instances.json"), _refs_pickle),
        SourceFormat(
            "refcoco-export", "refs", ("refs.parquet|refs.json", "[instances.json]"), _refs_export
        ),
        SourceFormat("flickr30k", "grounded", ("Flickr30k Entities root",), _flickr30k),
        SourceFormat("vqav2", "vqa", ("questions.json", "annotations.json"), _vqav2),
        SourceFormat("gqa", "vqa", ("questions.json",), _gqa),
        SourceFormat("textvqa", "vqa", ("textvqa.json",), _textvqa),
        SourceFormat("aokvqa", "multiple_choice", ("aokvqa.json",), _aokvqa),
        SourceFormat("llava", "conversations", ("data.json|data.jsonl",), _llava),
    )
}
TASK_KINDS = {
    "vqa": {"vqa", "multiple_choice"},
    "multiple_choice": {"multiple_choice"},
    "rec": {"refs"},
    "reg": {"refs"},
    "grounded_caption": {"grounded"},
    "detection": {"coco"},
    "layout": {"coco"},
    "pose": {"coco"},
    "short_caption": {"captions"},
    "detailed_caption": {"captions"},
    "conversation": {"conversations"},
}


def open_source(
    task: str, format_name: str, paths: list[Path], problems: Problems, options: dict[str, Any]
) -> Iterable[Any]:
    """The records of a source for a task; `options` may be completed for the builder."""
    if format_name not in FORMATS:
        raise ValueError(
            f"Unknown source format {format_name!r}; expected one of {sorted(FORMATS)}"
        )
    source = FORMATS[format_name]
    accepted = TASK_KINDS.get(task)
    if accepted is not None and source.kind not in accepted:
        fitting = sorted(name for name, f in FORMATS.items() if f.kind in accepted)
        raise ValueError(f"Task {task!r} cannot be built from {format_name!r}; it takes {fitting}")
    required = [p for p in source.paths if not p.startswith("[")]
    if not len(required) <= len(paths) <= len(source.paths):
        raise ValueError(
            f"Format {format_name!r} takes the paths {list(source.paths)}, got {len(paths)}"
        )
    return source.open(paths, problems, options)
