"""Flickr30k Entities: `Sentences/<image_id>.txt` (five captions whose phrases are marked
`[/EN#<chain>/<type> words]`) and `Annotations/<image_id>.xml` (PASCAL-VOC-like boxes named by
chain id; a chain may have several boxes, a box may serve several chains; `nobndbox`/`scene`
objects have none). Boxes are 1-based inclusive pixels in the files, 0-based x y x y here."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sphinx_mllm.data.readers.json_stream import AnnotationFormatError
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
    """Image size and chain id -> boxes."""
    try:
        root = ElementTree.parse(xml_path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as error:
        raise AnnotationFormatError(
            f"{xml_path}: not a Flickr30k Entities annotation ({error})"
        ) from error
    chains: dict[int, list[tuple[float, float, float, float]]] = {}
    for item in root.iter("object"):
        box = item.find("bndbox")
        if box is None:
            continue
        corners = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        xyxy = (corners[0] - 1, corners[1] - 1, corners[2], corners[3])
        for name in item.findall("name"):
            chains.setdefault(int(name.text), []).append(xyxy)
    return (width, height), chains


def read_flickr30k_entities(
    root: str | Path, image_ids: list[str] | None = None, problems: Problems | None = None
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
        xml_path = annotations_dir / f"{image_id}.xml"
        if not xml_path.is_file():
            problems.report(str(sentences_dir / f"{image_id}.txt"), "no matching annotation XML")
            continue
        size, chains = read_boxes(xml_path)
        for line in (sentences_dir / f"{image_id}.txt").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            caption, phrases = parse_sentence(line)
            grounded = tuple(
                GroundedPhrase(
                    text, chain, types, start, end, tuple(chains.get(chain, ())) if chain else ()
                )
                for text, chain, types, start, end in phrases
            )
            yield GroundedCaption(image_id, f"{image_id}.jpg", size, caption, grounded)
