"""Reading the records of large JSON annotation files one at a time: the elements of a top-level
array, of the array under a top-level key (`"annotations": [...]`), or the members of a top-level
object (GQA's questions). COCO-style files reach hundreds of megabytes, and `json.load` would
turn them into gigabytes of Python objects.

Each record is decoded by the `json` module itself (`raw_decode`, in C); this module only walks
the punctuation between records, strictly (a missing or extra comma is an error). Top-level values
that are not wanted are skipped record by record, so memory stays within the largest record. A
record cut by the end of the window makes the window grow to twice its size before the record is
decoded again, so decoding stays linear in the size of the file. What `json.load` accepts is
accepted (NaN and Infinity included: Python writes them, and the readers refuse them as values);
anything else is an `AnnotationFormatError` naming the file and the character where it goes
wrong, a value nested deeper than the interpreter's recursion limit included.

ijson was measured and not used here: its prefix bookkeeping grows with the square of the nesting
depth (a 60 kB file nested 30,000 deep took 2.2 GB and 5 s; 100,000 deep was killed for memory).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Literal

BLOCK = 1 << 20  # characters read at a time
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
# An error this close to the end of the window may be a token cut by it (`fals|e`): read on.
_CUT_TOKEN = 16


class AnnotationFormatError(ValueError):
    """An annotation file or record that does not follow its format; names file and record."""


class _Reader:
    """A window over a UTF-8 text file, decoding one JSON value at a time."""

    def __init__(self, path: Path, newline: str | None = None) -> None:
        self.path = path
        self.file = path.open("r", encoding="utf-8", newline=newline)
        self.text = ""
        self.position = 0
        self.offset = 0  # characters of the file before the window
        self.eof = False

    def close(self) -> None:
        self.file.close()

    def error(self, message: str) -> AnnotationFormatError:
        return AnnotationFormatError(
            f"{self.path}: {message} at character {self.offset + self.position}"
        )

    def grow(self) -> bool:
        """Read as much again as the window holds from the position on (at least a block);
        False at the end of the file."""
        if self.eof:
            return False
        try:
            block = self.file.read(max(BLOCK, len(self.text) - self.position))
        except UnicodeDecodeError as error:
            raise AnnotationFormatError(f"{self.path}: not UTF-8 text ({error})") from error
        if not block:
            self.eof = True
            return False
        self.offset += self.position
        self.text = self.text[self.position :] + block
        self.position = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace, without consuming it ("" at the end)."""
        while True:
            self.position = _SPACE.match(self.text, self.position).end()
            if self.position < len(self.text):
                return self.text[self.position]
            if not self.grow():
                return ""

    def expect(self, character: str, context: str) -> None:
        found = self.peek()
        if found != character:
            raise self.error(f"expected {character!r} {context}, found {_shown(found)}")
        self.position += 1

    def value(self) -> Any:
        """The JSON value at the position, reading more of the file until it is complete."""
        if not self.peek():
            raise self.error("the file ends where a value was expected (truncated?)")
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.position)
            except json.JSONDecodeError as error:
                cut = error.pos >= len(self.text) - _CUT_TOKEN or error.msg.startswith(
                    "Unterminated string"
                )
                if cut and self.grow():
                    continue
                raise AnnotationFormatError(
                    f"{self.path}: invalid or truncated JSON at character "
                    f"{self.offset + error.pos}: {error.msg}"
                ) from error
            except RecursionError as error:
                # no annotation format nests so deep; json's C decoder stops at the limit
                raise self.error("a value nested deeper than Python's recursion limit") from error
            if end == len(self.text) and self.grow():
                continue  # a number at the end of the window may go on in the next block
            self.position = end
            return value

    def elements(self, context: str) -> Iterator[Any]:
        """The elements of the array whose "[" was just consumed, up to its "]"."""
        if self.peek() == "]":
            self.position += 1
            return
        while True:
            yield self.value()
            character = self.peek()
            if character not in (",", "]"):  # "": the end of the file
                raise self.error(
                    f"expected ',' or ']' after an element of {context}, found {_shown(character)}"
                )
            self.position += 1
            if character == "]":
                return

    def keys(self, context: str) -> Iterator[str]:
        """The keys of the object whose "{" was just consumed; after each key the position is at
        its value, which the caller consumes (`value`, `skip`) before asking for the next key."""
        if self.peek() == "}":
            self.position += 1
            return
        while True:
            if self.peek() != '"':
                raise self.error(f"expected a key (a string) in {context}")
            key = self.value()
            self.expect(":", f"after the key {key!r} of {context}")
            yield key
            if self.peek() == "}":
                self.position += 1
                return
            self.expect(",", f"or '}}' after the value of {key!r} in {context}")

    def skip(self, context: str) -> None:
        """Consume the value at the position element by element (memory: its largest one)."""
        opening = self.peek()
        if opening == "[":
            self.position += 1
            for _ in self.elements(context):
                pass
        elif opening == "{":
            self.position += 1
            for _ in self.keys(context):
                self.value()
        else:
            self.value()

    def end(self) -> None:
        """Only whitespace may follow the top-level value."""
        if self.peek():
            raise self.error("unexpected text after the top-level value")


def _shown(character: str) -> str:
    return repr(character) if character else "the end of the file"


def _kind(character: str) -> str:
    return {"[": "array", "{": "object", "": "nothing (an empty file)"}.get(character, "a scalar")


def _top_level(path: Path, keys: Collection[str]) -> Iterator[tuple[str, Iterator[Any] | None]]:
    """(name, the elements of its array) for each top-level key of the JSON object in `path`,
    in file order: the elements for the keys of `keys` (whose values must be arrays), None for
    the others, whose values are skipped. What the caller leaves of the elements is skipped
    before the next pair; after the last one, only whitespace may follow the object."""
    reader = _Reader(path)
    try:
        if reader.peek() != "{":
            raise reader.error(
                f"expected a JSON object at the top level, found {_kind(reader.peek())}"
            )
        reader.position += 1
        for name in reader.keys("the top-level object"):
            if name not in keys:
                reader.skip(f"{name!r}")
                yield name, None
                continue
            if reader.peek() != "[":
                raise reader.error(f"{name!r} is not an array but {_kind(reader.peek())}")
            reader.position += 1
            elements = reader.elements(f"the array {name!r}")
            yield name, elements
            for _ in elements:
                pass
        reader.end()
    finally:
        reader.close()


def iter_arrays(path: str | Path, keys: Collection[str]) -> Iterator[tuple[str, Iterator[Any]]]:
    """(key, its elements, one at a time) for each top-level key of `keys` that the JSON object
    in `path` has, in file order, in one pass over the whole file (checked to its end)."""
    for name, elements in _top_level(Path(path), keys):
        if elements is not None:
            yield name, elements


def iter_array(path: str | Path, key: str, *, required: bool = True) -> Iterator[Any]:
    """The elements of the array under the top-level `key` of the JSON object in `path`, one at
    a time; the rest of the file after that array is not read. A missing key is an error naming
    the keys the file has, unless not `required` (then it yields nothing)."""
    path = Path(path)
    seen = []
    with contextlib.closing(_top_level(path, (key,))) as pairs:
        for name, elements in pairs:
            if elements is not None:
                yield from elements
                return
            seen.append(name)
    if required:
        raise AnnotationFormatError(f"{path}: no top-level key {key!r} (the file has {seen})")


def iter_top_level(
    path: str | Path, kind: Literal["array", "object"] | None = None
) -> Iterator[Any]:
    """The elements of a file whose top level is an array, or the (key, value) pairs of one whose
    top level is an object (GQA's questions: an object keyed by question id), one at a time.
    `kind` requires one of the two, naming the file when it holds the other."""
    path = Path(path)
    reader = _Reader(path)
    try:
        opening = reader.peek()
        found = _kind(opening)
        if found not in ("array", "object") or (kind is not None and found != kind):
            wanted = kind or "array or object"
            raise reader.error(f"expected a JSON {wanted} at the top level, found {found}")
        reader.position += 1
        if opening == "[":
            yield from reader.elements("the top-level array")
        else:
            for key in reader.keys("the top-level object"):
                yield key, reader.value()
        reader.end()
    finally:
        reader.close()


def load_json(path: str | Path) -> Any:
    """A whole (small) JSON file, with the file named in any error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as error:
        raise AnnotationFormatError(
            f"{path}: a value nested deeper than Python's recursion limit"
        ) from error
    except (ValueError, UnicodeDecodeError) as error:
        raise AnnotationFormatError(f"{path}: invalid JSON: {error}") from error
