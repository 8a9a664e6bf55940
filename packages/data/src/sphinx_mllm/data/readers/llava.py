"""LLaVA conversation data, the lingua franca of visual instruction tuning: a JSON list (or
JSONL, one object per line) of `{id, image?, conversations: [{from: human|gpt, value}]}`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers.json_stream import iter_top_level
from sphinx_mllm.data.readers.problems import Problems

ROLES = {"human", "gpt", "user", "assistant", "system"}


def read_llava(path: str | Path, problems: Problems | None = None) -> Iterator[dict[str, Any]]:
    """Conversation records, validated (an id, a list of turns with a role and a text value)."""
    path = Path(path)
    problems = problems or Problems()
    records = _jsonl(path, problems) if path.suffix == ".jsonl" else iter_top_level(path)
    for index, record in enumerate(records):
        where = f"{path} record {record.get('id', index) if isinstance(record, dict) else index}"
        reason = _problem(record)
        if reason:
            problems.report(where, reason)
            continue
        yield record


def _jsonl(path: Path, problems: Problems) -> Iterator[Any]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as error:
                problems.report(f"{path} line {number}", f"invalid JSON: {error}")


def _problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"not an object but {type(record).__name__}"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "no conversations"
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or turn.get("from") not in ROLES
            or not isinstance(turn.get("value"), str)
        ):
            return f"a turn without a known role and a text value: {str(turn)[:80]}"
    if "image" in record and not isinstance(record["image"], str):
        return "image is not a path"
    return None
