"""Merge the one-round records of an image into multi-round conversations, as LLaVA-1.5 does with
VQAv2, GQA and RefCOCO: the image is encoded once for all of its questions, so a training step
learns from several answers per visual forward pass.

Records merge when they share an image and a task (`meta.task`, when present). The `<image>`
placeholder stays in the first human turn only; the merged record keeps the first record's
metadata and lists the ids it was made from in `meta.merged_ids`. Records without an image pass
through unchanged. The order of first appearance is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sphinx_mllm.data.tasks.base import IMAGE_TOKEN


def merge_rounds(
    records: Iterable[dict[str, Any]], *, max_rounds: int | None = None
) -> Iterator[dict[str, Any]]:
    """Multi-round records from one-round (or shorter multi-round) records, at most `max_rounds`
    human-assistant rounds each (`None`: all of an image's rounds in one record). Holds the
    records of the input in memory while grouping."""
    if max_rounds is not None and max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1 (or None for no limit), got {max_rounds}")
    groups: dict[tuple[str | None, Any], list[dict[str, Any]]] = {}  # in first-seen order
    for index, record in enumerate(records):
        image = record.get("image")
        task = (record.get("meta") or {}).get("task")
        key = (str(image), task) if image is not None else (None, index)  # no image: alone
        groups.setdefault(key, []).append(record)
    for (image, _), group in groups.items():
        if image is None:
            yield group[0]
        else:
            yield from _merged(group, max_rounds)


def _merged(records: list[dict[str, Any]], max_rounds: int | None) -> Iterator[dict[str, Any]]:
    current: list[dict[str, Any]] = []
    rounds = 0
    for record in records:
        turns = _rounds_of(record)
        if current and max_rounds is not None and rounds + len(turns) // 2 > max_rounds:
            yield _join(current)
            current, rounds = [], 0
        current.append(record)
        rounds += len(turns) // 2
    if current:
        yield _join(current)


def _rounds_of(record: dict[str, Any]) -> list[dict[str, str]]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"Record {record.get('id')!r} has no conversations to merge")
    speakers = [turn.get("from") for turn in turns]
    if len(turns) % 2 or any(
        speaker != ("human" if i % 2 == 0 else "gpt") for i, speaker in enumerate(speakers)
    ):
        raise ValueError(
            f"Record {record.get('id')!r}: merging needs alternating human/gpt turns starting "
            f"with human, got {speakers}"
        )
    return turns


def _join(records: list[dict[str, Any]]) -> dict[str, Any]:
    if len(records) == 1:
        return records[0]
    conversations = []
    for index, record in enumerate(records):
        for position, turn in enumerate(_rounds_of(record)):
            value = turn["value"]
            if position == 0:
                value = _without_image(value) if index else _image_first(value, record)
            elif IMAGE_TOKEN in value:
                raise ValueError(
                    f"Record {record.get('id')!r}: {IMAGE_TOKEN} outside the first human turn"
                )
            conversations.append({"from": turn["from"], "value": value})
    first = records[0]
    merged = {key: value for key, value in first.items() if key not in {"conversations", "meta"}}
    merged["id"] = f"{first.get('id')}+{len(records) - 1}"
    merged["conversations"] = conversations
    merged["meta"] = {**(first.get("meta") or {}), "merged_ids": [r.get("id") for r in records]}
    return merged


def _image_first(value: str, record: dict[str, Any]) -> str:
    if value.count(IMAGE_TOKEN) != 1:
        raise ValueError(
            f"Record {record.get('id')!r}: the first human turn must hold one {IMAGE_TOKEN}, "
            f"found {value.count(IMAGE_TOKEN)}"
        )
    return value


def _without_image(value: str) -> str:
    return value.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "").strip()
