"""An index of one LLaVA conversation file (JSON array or JSONL) for streamed training: where each
usable record lies and what batching needs to know of it, in a few numpy arrays (22 bytes a
record, no Python object per record), so that the records themselves are read one at a time,
when a `DataLoader` worker renders them.

What the index pass checks, once per file: that the file is JSON (a JSONL line that is not is a
bad record; a JSON array broken in its syntax stops the file), that each record is a valid LLaVA
record (`check_llava_record`: known roles, text values, image names that stay under the image
root, one `<image>` per image). Bad records raise or are skipped and counted (`on_error`), named
by file and line. What it does not check: whether images exist and decode, and whether the
conversation renders with the model's chat template; workers do that when they load a record.

Per record it keeps the byte span, the line, the number of images (which gives the data type,
image-text or text-only) and the characters of the turns' texts: the length SPHINX groups its
batches by (LLaMA2-Accessory's `FinetuneDialogDataset` sorts each data type by
`sum(len(turn['value']) for turn in conversations)`), free to count here where tokens are not.

The index is cached beside the file (`NAME.sphinx-index.npz`, numpy arrays, read without
pickle) and used again while the file's size and modification time are those it was built from.
"""

from __future__ import annotations

import json
import os
import zipfile
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sphinx_mllm.core.outputs import atomic_file
from sphinx_mllm.data.readers import AnnotationFormatError, Problems
from sphinx_mllm.data.readers.checks import RecordProblem
from sphinx_mllm.data.readers.llava import check_llava_record, llava_images, record_name
from sphinx_mllm.data.readers.spans import record_spans

INDEX_FORMAT = 1
CACHE_SUFFIX = ".sphinx-index.npz"
KEPT_PROBLEMS = 20  # messages of skipped records kept with the index, to raise from a cache


class RecordLoadError(ValueError):
    """A record that cannot be loaded (read, rendered, its images decoded); names file and line."""


@dataclass
class _NamedProblems(Problems):
    """`Problems` that also keep the first messages of what they skipped."""

    messages: list[str] = field(default_factory=list)

    def report(self, where: str, reason: str) -> None:
        if len(self.messages) < KEPT_PROBLEMS:
            self.messages.append(f"{where}: {reason}")
        super().report(where, reason)


@dataclass(eq=False)
class RecordIndex:
    """The usable records of one file: row i is a record at bytes `[starts[i], starts[i] +
    sizes[i])`, on line `lines[i]`, with `images[i]` images and `characters[i]` characters of
    text. `skipped` counts the records left out, by reason; `problems` names the first few."""

    path: Path
    starts: np.ndarray
    sizes: np.ndarray
    lines: np.ndarray
    images: np.ndarray
    characters: np.ndarray
    file_size: int
    file_mtime_ns: int
    skipped: dict[str, int]
    problems: tuple[str, ...]
    _fd: int | None = field(default=None, repr=False)
    _fd_pid: int | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.starts)

    def where(self, row: int) -> str:
        """How an error names the record of `row`: its file and line."""
        return f"{self.path} line {int(self.lines[row])}"

    def read(self, row: int) -> dict[str, Any]:
        """The record of `row`, read and decoded now (a positioned read: safe in forked
        workers that share the descriptor)."""
        raw = os.pread(self._descriptor(), int(self.sizes[row]), int(self.starts[row]))
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as error:
            raise RecordLoadError(
                f"{self.where(row)}: the record no longer decodes ({error}); was the file "
                "rewritten while the run read it?"
            ) from error

    def read_named(self, row: int) -> tuple[dict[str, Any], str]:
        """The record of `row` and how an error names it: file, line and its id if it has one."""
        record = self.read(row)
        name = record.get("id")
        named = f" (record {name!r})" if isinstance(name, str | int) else ""
        return record, self.where(row) + named

    def _descriptor(self) -> int:
        """This process's descriptor of the file, opened on first use and checked to be the
        file that was indexed."""
        if self._fd is None or self._fd_pid != os.getpid():
            fd = os.open(self.path, os.O_RDONLY)
            stat = os.fstat(fd)
            if (stat.st_size, stat.st_mtime_ns) != (self.file_size, self.file_mtime_ns):
                os.close(fd)
                raise RecordLoadError(
                    f"{self.path} changed since it was indexed (size or modification time); "
                    "restart the run to index it again"
                )
            self._fd, self._fd_pid = fd, os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_fd_pid": None}

    def __del__(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)


def index_llava_file(
    path: str | Path,
    *,
    on_error: str = "raise",
    allow_outside: bool = False,
    cache: bool = True,
) -> RecordIndex:
    """The index of a LLaVA file (see the module docstring), from its cache when that matches
    the file, else by one pass over it (then cached, when `cache` and the folder is writable).
    Bad records raise, naming file and line, or are skipped and counted (`on_error`); a cached
    index that skipped records raises the first of them under `on_error="raise"`, as a fresh
    pass would."""
    problems = _NamedProblems(on_error)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {path}")
    stat = path.stat()
    cache_path = path.with_name(path.name + CACHE_SUFFIX)
    index = _load_cache(cache_path, path, stat, allow_outside) if cache else None
    if index is None:
        index = _index_pass(path, stat, problems, allow_outside)
        if cache:
            _save_cache(cache_path, index, allow_outside)
    elif on_error == "raise" and index.problems:
        raise AnnotationFormatError(index.problems[0])
    if not len(index) and not index.skipped:
        raise ValueError(f"{path}: the file holds no records")
    return index


def _index_pass(
    path: Path, stat: os.stat_result, problems: _NamedProblems, allow_outside: bool
) -> RecordIndex:
    starts, sizes, lines, images, characters = (array("q") for _ in range(5))
    for ordinal, span in enumerate(record_spans(path)):
        if span.error is not None:
            problems.report(f"{path} line {span.line}", span.error)
            continue
        record = span.value
        try:
            check_llava_record(record, allow_outside)
        except RecordProblem as problem:
            name = record_name(record, ordinal)
            problems.report(f"{path} line {span.line} (record {name!r})", str(problem))
            continue
        starts.append(span.start)
        sizes.append(span.end - span.start)
        lines.append(span.line)
        images.append(len(llava_images(record)))
        characters.append(sum([len(turn["value"]) for turn in record["conversations"]]))
    return RecordIndex(
        path,
        np.frombuffer(starts, dtype=np.int64).copy(),
        np.frombuffer(sizes, dtype=np.int64).astype(np.uint32),
        np.frombuffer(lines, dtype=np.int64).astype(np.uint32),
        np.frombuffer(images, dtype=np.int64).astype(np.uint16),
        np.frombuffer(characters, dtype=np.int64).astype(np.uint32),
        stat.st_size,
        stat.st_mtime_ns,
        dict(problems.skipped),
        tuple(problems.messages),
    )


_ARRAYS = ("starts", "sizes", "lines", "images", "characters")


def _save_cache(cache_path: Path, index: RecordIndex, allow_outside: bool) -> None:
    """Write the index beside its file; a folder that cannot be written leaves it uncached."""
    skipped = Counter(index.skipped)
    try:
        with atomic_file(cache_path, "wb") as out:
            np.savez(
                out,
                format=np.array(INDEX_FORMAT),
                data_file=np.array([index.file_size, index.file_mtime_ns], dtype=np.int64),
                allow_outside=np.array(allow_outside),
                skipped_reasons=np.array(list(skipped), dtype=str),
                skipped_counts=np.array(list(skipped.values()), dtype=np.int64),
                problems=np.array(index.problems, dtype=str),
                **{name: getattr(index, name) for name in _ARRAYS},
            )
    except OSError:
        pass  # a read-only data folder: the next run indexes again


def _load_cache(
    cache_path: Path, path: Path, stat: os.stat_result, allow_outside: bool
) -> RecordIndex | None:
    """The cached index when it was built from this very file with the same options."""
    try:
        with np.load(cache_path, allow_pickle=False) as saved:
            if (
                int(saved["format"]) != INDEX_FORMAT
                or saved["data_file"].tolist() != [stat.st_size, stat.st_mtime_ns]
                or bool(saved["allow_outside"]) != allow_outside
            ):
                return None
            arrays = {name: saved[name] for name in _ARRAYS}
            skipped = dict(
                zip(
                    saved["skipped_reasons"].tolist(), saved["skipped_counts"].tolist(), strict=True
                )
            )
            problems = tuple(saved["problems"].tolist())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # absent, or not a cache this version wrote: index again
    return RecordIndex(
        path, **arrays, file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns,
        skipped=skipped, problems=problems,
    )  # fmt: skip
