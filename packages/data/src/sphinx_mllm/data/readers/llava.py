"""LLaVA conversation data, the lingua franca of visual instruction tuning: a JSON list (or
JSONL, one object per line) of `{id, image?, conversations: [{from: human|gpt, value}]}`.

`image` is one file name, or a list of them for a multi-image record, whose conversation then
holds one `<image>` per image, in the order of the list (a single image may leave its `<image>`
out: the chat template's image slot places it, as before)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sphinx_mllm.data.readers import checks
from sphinx_mllm.data.readers.json_stream import AnnotationFormatError, iter_top_level
from sphinx_mllm.data.readers.problems import Problems

ROLES = {"human", "gpt", "user", "assistant", "system"}
IMAGE_PLACEHOLDER = "<image>"


def read_llava(
    path: str | Path, problems: Problems | None = None, *, allow_outside: bool = False
) -> Iterator[dict[str, Any]]:
    """Conversation records, validated (see `check_llava_record`). An image name that is
    absolute or leaves the image root (`..`) is refused unless `allow_outside`."""
    path = Path(path)
    problems = problems or Problems()
    records = _jsonl(path, problems) if path.suffix == ".jsonl" else iter_top_level(path, "array")
    for index, record in enumerate(records):
        if problems.attempt(
            f"{path} record {record_name(record, index)}", check_llava_record, record, allow_outside
        ):
            yield record


def record_name(record: Any, index: int) -> int | str:
    """How an error names a record: its id when it has a plain one, else its position."""
    name = record.get("id", index) if isinstance(record, dict) else index
    return name if isinstance(name, str | int) else checks.shown(name)


def llava_images(record: dict[str, Any]) -> list[str]:
    """The image names of a checked record, in order (none for a text-only record)."""
    image = record.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, list) else [image]


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


def check_llava_record(record: Any, allow_outside: bool = False) -> bool:
    """True for a valid record: an object with a non-empty list of turns, each a known role and
    a text value, and an optional `image` that is a relative file name under the image root
    (any name with `allow_outside`) or a non-empty list of them, with as many `<image>`
    placeholders in the turns as images. A `RecordProblem` says what is wrong with another."""
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
        _check_images(record["image"], turns, allow_outside)
    return True


def _check_images(image: Any, turns: list[dict[str, Any]], allow_outside: bool) -> None:
    if isinstance(image, str):
        names = [image]
    elif isinstance(image, list) and image and all(isinstance(name, str) for name in image):
        names = image
    else:
        raise checks.RecordProblem(
            f"image is not a path or a non-empty list of paths: {checks.shown(image)}"
        )
    for name in names:
        checks.image_name(name, allow_outside)
    placeholders = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if placeholders != len(names) and not (len(names) == 1 and placeholders == 0):
        raise checks.RecordProblem(
            f"the conversation holds {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for "
            f"{len(names)} image(s) {checks.shown(names)}; write one {IMAGE_PLACEHOLDER} per "
            "image, in the order of the list"
        )
