"""Streaming the elements of a top-level JSON array (`"annotations": [...]`) without loading the
whole file: COCO-style files reach hundreds of megabytes, and `json.load` would turn them into
gigabytes of Python objects. The file is read in blocks and decoded element by element.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


class AnnotationFormatError(ValueError):
    """An annotation file or record that does not follow its format; names file and record."""


class _Buffer:
    """A sliding window over a text file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("r", encoding="utf-8")
        self.text = ""
        self.position = 0
        self.eof = False

    def close(self) -> None:
        self.file.close()

    def more(self) -> bool:
        if self.eof:
            return False
        block = self.file.read(BLOCK)
        if not block:
            self.eof = True
            return False
        self.text = self.text[self.position :] + block
        self.position = 0
        return True

    def skip_whitespace(self) -> str:
        while True:
            while self.position < len(self.text) and self.text[self.position] in _WHITESPACE:
                self.position += 1
            if self.position < len(self.text):
                return self.text[self.position]
            if not self.more():
                return ""

    def decode_value(self) -> Any:
        """The JSON value at the position, reading more of the file until it is complete."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.position)
            except json.JSONDecodeError as error:
                if self.more():
                    continue
                raise AnnotationFormatError(
                    f"{self.path}: invalid or truncated JSON: {error.msg}"
                ) from error
            if end == len(self.text) and not self.eof and self.more():
                continue  # a number at the end of the window may continue in the next block
            self.position = end
            return value


def iter_array(path: str | Path, key: str) -> Iterator[Any]:
    """The elements of the array under the top-level `key` of the JSON object in `path`, one
    at a time. A missing key yields nothing; a file that is not a JSON object is an error."""
    path = Path(path)
    buffer = _Buffer(path)
    try:
        if buffer.skip_whitespace() != "{":
            raise AnnotationFormatError(f"{path}: expected a JSON object at the top level")
        buffer.position += 1
        while True:
            character = buffer.skip_whitespace()
            if character == "}":
                return
            if character == ",":
                buffer.position += 1
                continue
            name = buffer.decode_value()
            if buffer.skip_whitespace() != ":":
                raise AnnotationFormatError(f"{path}: expected ':' after the key {name!r}")
            buffer.position += 1
            if name != key:
                buffer.skip_whitespace()
                buffer.decode_value()  # other top-level values are read and dropped
                continue
            if buffer.skip_whitespace() != "[":
                raise AnnotationFormatError(f"{path}: {key!r} is not an array")
            buffer.position += 1
            while True:
                character = buffer.skip_whitespace()
                if character == "]":
                    buffer.position += 1
                    return
                if character == ",":
                    buffer.position += 1
                    continue
                if character == "":
                    raise AnnotationFormatError(f"{path}: the array {key!r} is truncated")
                yield buffer.decode_value()
    finally:
        buffer.close()


def load_json(path: str | Path) -> Any:
    """A whole (small) JSON file, with the file named in any error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as error:
        raise AnnotationFormatError(f"{path}: invalid JSON: {error}") from error


def iter_top_level(path: str | Path) -> Iterator[Any]:
    """The elements of a file whose top level is an array, or the (key, value) pairs of one whose
    top level is an object (GQA's questions: a dict keyed by question id), one at a time."""
    path = Path(path)
    buffer = _Buffer(path)
    try:
        opening = buffer.skip_whitespace()
        if opening not in ("[", "{"):
            raise AnnotationFormatError(f"{path}: expected a JSON array or object at the top level")
        closing = "]" if opening == "[" else "}"
        buffer.position += 1
        while True:
            character = buffer.skip_whitespace()
            if character == closing:
                return
            if character == ",":
                buffer.position += 1
                continue
            if character == "":
                raise AnnotationFormatError(f"{path}: the file is truncated")
            if opening == "[":
                yield buffer.decode_value()
                continue
            key = buffer.decode_value()
            if buffer.skip_whitespace() != ":":
                raise AnnotationFormatError(f"{path}: expected ':' after the key {key!r}")
            buffer.position += 1
            buffer.skip_whitespace()
            yield key, buffer.decode_value()
    finally:
        buffer.close()
