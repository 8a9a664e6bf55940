"""Conversation pass-through: LLaVA-format records (read and validated by the LLaVA reader)
kept as they are, normalised to `human`/`gpt` roles and given metadata, so instruction data
from elsewhere mixes with the built tasks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sphinx_mllm.data.tasks.base import Sample, TaskBuilder

ROLE_NAMES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class ConversationPassThrough(TaskBuilder):
    name = "conversation"
    default_instruction = ""

    def samples(self, source: Iterable[dict[str, Any]]) -> Iterator[Sample]:
        for index, record in enumerate(source):
            turns = [
                {"from": ROLE_NAMES[turn["from"]], "value": turn["value"]}
                for turn in record["conversations"]
                if turn["from"] in ROLE_NAMES
            ]
            meta = {
                key: value
                for key, value in record.get("meta", {}).items()
                if key not in ("task", "source")
            }
            yield Sample(str(record.get("id", index)), record.get("image"), turns, meta)


def conversation(**options: Any) -> ConversationPassThrough:
    """LLaVA-format conversations passed through, validated, with metadata."""
    return ConversationPassThrough(**options)
