"""Where each record of a JSON-array or JSONL annotation file lies: its byte span and the line it
starts on, with the record decoded once on the way. A lazy reader keeps only the spans and later
reads one record back with a positioned read (`json.loads(os.pread(fd, size, start))`), so
memory does not grow with the file.

JSONL (by the `.jsonl` suffix) is read in binary, line by line: a line that is not JSON is a
span with an `error`, and the next line is read on (one bad line spoils only itself). A JSON file
must hold a top-level array, walked with sphinx-data's streaming reader (`json_stream`) and its
strict punctuation rules; an error there stops the file, naming the character and line, since
nothing after a syntax error can be trusted. The reader works in characters: the byte offset of
each element is counted by encoding the text between consecutive elements (each character once),
and the window is opened without newline translation so that `\\r\\n` counts two bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from sphinx_mllm.data.readers.json_stream import AnnotationFormatError, _kind, _Reader, _shown


class RecordSpan(NamedTuple):
    """One record: its decoded value (None when `error`), bytes `[start, end)` of the file and
    the 1-based line its first character is on; `error` says why a JSONL line is not JSON."""

    value: Any
    start: int
    end: int
    line: int
    error: str | None = None


def record_spans(path: str | Path) -> Iterator[RecordSpan]:
    """The records of a JSONL file (by suffix) or of a JSON file's top-level array, in order,
    with their spans (see the module docstring)."""
    path = Path(path)
    return _jsonl_spans(path) if path.suffix == ".jsonl" else _array_spans(path)


def _jsonl_spans(path: Path) -> Iterator[RecordSpan]:
    with path.open("rb") as lines:
        start = 0
        for number, line in enumerate(lines, 1):
            end = start + len(line)
            if line.strip():
                try:
                    yield RecordSpan(json.loads(line), start, end, number)
                except ValueError as error:  # UnicodeDecodeError included
                    yield RecordSpan(None, start, end, number, f"invalid JSON: {error}")
                except RecursionError:
                    yield RecordSpan(None, start, end, number, "a value nested too deeply")
            start = end


class _LocatingReader(_Reader):
    """The streaming reader, also counting the bytes and lines before a position."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, newline="")
        self._cursor = 0  # position in the window up to which bytes and lines are counted
        self._bytes = 0
        self._line = 1

    def locate(self, position: int) -> tuple[int, int]:
        """(byte offset, line) of `position` in the window; positions must not go back."""
        passed = self.text[self._cursor : position]
        self._bytes += len(passed) if passed.isascii() else len(passed.encode("utf-8"))
        self._line += passed.count("\n")
        self._cursor = position
        return self._bytes, self._line

    def grow(self) -> bool:
        self.locate(self.position)  # the window is about to drop what lies before it
        grown = super().grow()
        if grown:
            self._cursor = 0
        return grown

    def error(self, message: str) -> AnnotationFormatError:
        _, line = self.locate(max(self.position, self._cursor))
        return AnnotationFormatError(
            f"{self.path}: {message} at character {self.offset + self.position} (line {line})"
        )


def _array_spans(path: Path) -> Iterator[RecordSpan]:
    reader = _LocatingReader(path)
    try:
        if reader.peek() != "[":
            raise reader.error(
                f"expected a JSON array at the top level, found {_kind(reader.peek())}"
            )
        reader.position += 1
        if reader.peek() == "]":
            reader.position += 1
        else:
            while True:
                reader.peek()  # the position is now the element's first character
                start, line = reader.locate(reader.position)
                value = reader.value()
                end, _ = reader.locate(reader.position)
                yield RecordSpan(value, start, end, line)
                character = reader.peek()
                if character not in (",", "]"):
                    raise reader.error(
                        "expected ',' or ']' after an element of the top-level array, found "
                        f"{_shown(character)}"
                    )
                reader.position += 1
                if character == "]":
                    break
        reader.end()
    finally:
        reader.close()
