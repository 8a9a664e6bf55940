"""Flickr30k Entities: `Sentences/<image_id>.txt` (five captions whose phrases are marked
`[/EN#<chain>/<type> words]`) and `Annotations/<image_id>.xml` (PASCAL-VOC-like boxes named by
chain id; a chain may have several boxes, a box may serve several chains; `nobndbox`/`scene`
objects have none). Boxes are 1-based inclusive pixels in the files, 0-based x y x y here,
checked by the rule of every reader (`checks.box`): a box leaving its image is bad, not clamped.
A bad annotation file or box makes the image's captions bad (a phrase would lose a box)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sphinx_mllm.data.readers import checks
from sphinx_mllm.data.readers.problems import Problems

PHRASE = re.compile(r"\[/EN#(?P<chain>\d+)/(?P<types>[^\s\]]+) (?P<words>[^\]]+)\]")


@dataclass(frozen=True)
class GroundedPhrase:
    text: str
    chain: int
    types: tuple[str, ...]
    start: int  # character span in the plain caption
    end: int
    boxes: tuple[tuple[float, float, float, float], ...]  # x1 y1 x2 y2, empty when not visual


@dataclass(frozen=True)
class GroundedCaption:
    image_id: str
    file_name: str
    image_size: tuple[int, int]
    caption: str
    phrases: tuple[GroundedPhrase, ...]


def parse_sentence(line: str) -> tuple[str, list[tuple[str, int, tuple[str, ...], int, int]]]:
    """A marked sentence -> the plain caption and its phrases (text, chain, types, start, end)."""
    plain, phrases, last = [], [], 0
    length = 0
    for match in PHRASE.finditer(line):
        before = line[last : match.start()]
        plain.append(before)
        length += len(before)
        words = match["words"]
        phrases.append(
            (
                words,
                int(match["chain"]),
                tuple(match["types"].split("/")),
                length,
                length + len(words),
            )
        )
        plain.append(words)
        length += len(words)
        last = match.end()
    plain.append(line[last:])
    return "".join(plain).strip(), phrases


def read_boxes(
    xml_path: Path,
) -> tuple[tuple[int, int], dict[int, list[tuple[float, float, float, float]]]]:
    """Image size and chain id -> boxes; a file that is not such an annotation, or a box that
    breaks the readers' rule (`checks.box`: an area, inside the image), is a `RecordProblem`."""
    try:
        root = ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as error:
        raise checks.RecordProblem(
            f"not a Flickr30k Entities annotation (invalid XML: {error})"
        ) from error
    size = root.find("size")
    if size is None:
        raise checks.RecordProblem("not a Flickr30k Entities annotation (no <size>)")
    image_size = checks.image_size(
        _xml_number(size, "width", "size"), _xml_number(size, "height", "size")
    )
    chains: dict[int, list[tuple[float, float, float, float]]] = {}
    for index, item in enumerate(root.iter("object")):
        box = item.find("bndbox")
        if box is None:
            continue  # `nobndbox` and `scene` objects have no box
        where = f"object {index}"
        xmin, ymin, xmax, ymax = (
            _xml_number(box, corner, where) for corner in ("xmin", "ymin", "xmax", "ymax")
        )
        xyxy = checks.box((xmin - 1, ymin - 1, xmax, ymax), image_size, "xyxy", f"{where} box")
        for name in item.findall("name"):
            chain = (name.text or "").strip()
            if not chain.isdigit():
                raise checks.RecordProblem(f"{where} has the chain name {chain!r}, not a number")
            chains.setdefault(int(chain), []).append(xyxy)
    return image_size, chains


def _xml_number(element: ElementTree.Element, tag: str, where: str) -> float:
    text = element.findtext(tag)
    if text is None:
        raise checks.RecordProblem(f"{where} has no <{tag}>")
    try:
        return checks.number(float(text), tag)
    except ValueError as error:
        raise checks.RecordProblem(f"{where} <{tag}> is not a number: {text[:40]!r}") from error


def read_flickr30k_entities(
    root: str | Path,
    image_ids: list[str] | None = None,
    problems: Problems | None = None,
    *,
    allow_outside: bool = False,
) -> Iterator[GroundedCaption]:
    """Every caption of the images under `root` (`Sentences/`, `Annotations/`), with boxes."""
    root = Path(root)
    problems = problems or Problems()
    sentences_dir, annotations_dir = root / "Sentences", root / "Annotations"
    if not sentences_dir.is_dir() or not annotations_dir.is_dir():
        raise FileNotFoundError(f"{root} needs Sentences/ and Annotations/ folders")
    ids = (
        image_ids
        if image_ids is not None
        else sorted(path.stem for path in sentences_dir.glob("*.txt"))
    )
    for image_id in ids:
        sentences_path = sentences_dir / f"{image_id}.txt"
        xml_path = annotations_dir / f"{image_id}.xml"
        if not xml_path.is_file():
            problems.report(str(sentences_path), "no matching annotation XML")
            continue
        boxes = problems.attempt(str(xml_path), read_boxes, xml_path)
        if boxes is None:
            continue
        captions = problems.attempt(
            str(sentences_path), _captions, image_id, sentences_path, boxes, allow_outside
        )
        yield from captions or ()


def _captions(
    image_id: str,
    sentences_path: Path,
    boxes: tuple[tuple[int, int], dict[int, list[tuple[float, float, float, float]]]],
    allow_outside: bool,
) -> list[GroundedCaption]:
    """The captions of one image, each phrase with the boxes of its chain."""
    file_name = checks.image_name(f"{image_id}.jpg", allow_outside)
    size, chains = boxes
    try:
        lines = sentences_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise checks.RecordProblem(f"not UTF-8 text ({error})") from error
    captions = []
    for line in lines:
        if not line.strip():
            continue
        caption, phrases = parse_sentence(line)
        grounded = tuple(
            GroundedPhrase(
                text, chain, types, start, end, tuple(chains.get(chain, ())) if chain else ()
            )
            for text, chain, types, start, end in phrases
        )
        captions.append(GroundedCaption(image_id, file_name, size, caption, grounded))
    return captions
