"""The source formats `sphinx-data build` reads, and which tasks each can feed.

Each format names the paths it takes and opens them with its reader; each task names the kind
of records it builds from. A task given a format of another kind is an error that lists the
formats it accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers import (
    CocoFile,
    Problems,
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


def _coco(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    return [CocoFile(paths[0], problems)]


def _layout(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    coco = CocoFile(paths[0], problems)
    layout_category_names(coco)  # refuses files whose categories are not layout ones
    return [coco]


def _captions(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    coco = CocoFile(paths[0], problems)
    options["images"] = coco.images
    return coco.captions()


def _refs_pickle(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    refs = read_refs_pickle(paths[0], paths[1], problems)
    return _split(refs, options.pop("split", None))


def _refs_export(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    sizes = (
        {i.id: i.size for i in CocoFile(paths[1], problems).images.values()}
        if len(paths) > 1
        else None
    )
    refs = read_refs_export(paths[0], image_sizes=sizes, problems=problems)
    return _split(refs, options.pop("split", None))


def _split(refs: Iterable[ReferringExpression], split: str | None) -> Iterable[ReferringExpression]:
    return refs if split is None else (ref for ref in refs if ref.split == split)


def _vqav2(paths: list[Path], problems: Problems, options: dict[str, Any]) -> Iterable[Any]:
    pattern = options.pop("image_pattern", None)
    extra = {"image_pattern": pattern} if pattern else {}
    return read_vqav2(paths[0], paths[1], problems=problems, **extra)


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
        SourceFormat(
            "flickr30k",
            "grounded",
            ("Flickr30k Entities root",),
            lambda p, pr, o: read_flickr30k_entities(p[0], problems=pr),
        ),
        SourceFormat("vqav2", "vqa", ("questions.json", "annotations.json"), _vqav2),
        SourceFormat("gqa", "vqa", ("questions.json",), lambda p, pr, o: read_gqa(p[0], pr)),
        SourceFormat("textvqa", "vqa", ("textvqa.json",), lambda p, pr, o: read_textvqa(p[0], pr)),
        SourceFormat(
            "aokvqa",
            "multiple_choice",
            ("aokvqa.json",),
            lambda p, pr, o: read_aokvqa(p[0], problems=pr),
        ),
        SourceFormat(
            "llava",
            "conversations",
            ("data.json|data.jsonl",),
            lambda p, pr, o: read_llava(p[0], pr),
        ),
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
