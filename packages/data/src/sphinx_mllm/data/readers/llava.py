"""LLaVA conversation data, the lingua franca of visual instruction tuning: a JSON list (or
JSONL, one object per line) of `{id, image?, conversations: [{from: human|gpt, value}]}`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers import checks
from sphinx_mllm.data.readers.json_stream import AnnotationFormatError, iter_top_level
from sphinx_mllm.data.readers.problems import Problems

ROLES = {"human", "gpt", "user", "assistant", "system"}


def read_llava(
    path: str | Path, problems: Problems | None = None, *, allow_outside: bool = False
) -> Iterator[dict[str, Any]]:
    """Conversation records, validated (an id, a list of turns with a role and a text value, an
    image that is a file name). An image name that is absolute or leaves the image root (`..`)
    is refused unless `allow_outside`."""
    path = Path(path)
    problems = problems or Problems()
    records = _jsonl(path, problems) if path.suffix == ".jsonl" else iter_top_level(path, "array")
    for index, record in enumerate(records):
        name = record.get("id", index) if isinstance(record, dict) else index
        name = name if isinstance(name, str | int) else checks.shown(name)
        if problems.attempt(f"{path} record {name}", _check, record, allow_outside):
            yield record


def _jsonl(path: Path, problems: Problems) -> Iterator[Any]:
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as error:
                    problems.report(f"{path} line {number}", f"invalid JSON: {error}")
                except RecursionError:
                    problems.report(f"{path} line {number}", "a value nested too deeply")
    except UnicodeDecodeError as error:
        raise AnnotationFormatError(f"{path}: not UTF-8 text ({error})") from error


def _check(record: Any, allow_outside: bool) -> bool:
    """True for a valid record; a `RecordProblem` says what is wrong with another."""
    record = checks.record_fields(record, ())
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise checks.RecordProblem("no conversations")
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or turn["from"] not in ROLES
            or not isinstance(turn.get("value"), str)
        ):
            raise checks.RecordProblem(
                f"a turn without a known role and a text value: {checks.shown(turn)}"
            )
    if "image" in record:
        if not isinstance(record["image"], str):
            raise checks.RecordProblem("image is not a path")
        checks.image_name(record["image"], allow_outside)
    return True
