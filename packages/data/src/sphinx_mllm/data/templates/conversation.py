"""LLaVA-style conversations (`[{"from": "human" | "gpt", "value": ...}]`) read into checked turns.

Accepted roles: "human" / "user", "gpt" / "assistant", and "system" as the first message only.
The shape must be: an optional system message, then user and assistant messages alternating,
starting with the user and ending with the assistant. A final assistant message whose value is
None asks for a generation prompt (the reply is left for the model), as in LLaMA2-Accessory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]

_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class ConversationError(ValueError):
    """A conversation that cannot be rendered; the message names the sample."""

    def __init__(self, sample_id: str, problem: str) -> None:
        super().__init__(f"sample {sample_id!r}: {problem}")
        self.sample_id = sample_id
        self.problem = problem


@dataclass(frozen=True)
class Message:
    """One message of a checked conversation; `text` is None only for a generation prompt."""

    role: Role
    text: str | None
    index: int  # position in the original conversation, for error messages


@dataclass(frozen=True)
class Conversation:
    """A checked conversation: the system message (if the data gives one) and the turns."""

    system: str | None
    messages: tuple[Message, ...]

    @property
    def asks_for_generation(self) -> bool:
        return self.messages[-1].text is None


def read_conversation(conversation: Sequence[Mapping[str, Any]], sample_id: str) -> Conversation:
    """Check roles, values and alternation; raise `ConversationError` naming the sample."""
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise ConversationError(
            sample_id, f"conversation must be a list of messages, got {type(conversation)}"
        )
    messages = [_read_message(item, index, sample_id) for index, item in enumerate(conversation)]
    system = None
    if messages and messages[0].role == "system":
        system = messages.pop(0).text
        if system is None:
            raise ConversationError(sample_id, "message 0 (system) has no value")
    if not messages:
        raise ConversationError(sample_id, "the conversation has no user or assistant message")
    for position, message in enumerate(messages):
        expected = "user" if position % 2 == 0 else "assistant"
        if message.role != expected:
            raise ConversationError(
                sample_id,
                f"message {message.index} is from {message.role!r} where {expected!r} was "
                "expected: after an optional system message, user and assistant must alternate, "
                "starting with the user",
            )
        if message.text is None and (message.role == "user" or position != len(messages) - 1):
            raise ConversationError(
                sample_id,
                f"message {message.index} has no value; only a final assistant message may be "
                "None (a generation prompt)",
            )
    if messages[-1].role != "assistant":
        raise ConversationError(
            sample_id,
            "the conversation ends with a user message; add {'from': 'gpt', 'value': None} to "
            "render a generation prompt",
        )
    return Conversation(system=system, messages=tuple(messages))


def _read_message(item: Any, index: int, sample_id: str) -> Message:
    if not isinstance(item, Mapping):
        raise ConversationError(
            sample_id, f"message {index} is a {type(item).__name__}, not a dict"
        )
    speaker = item.get("from", item.get("role"))
    role = _ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
    if role is None:
        raise ConversationError(
            sample_id,
            f"message {index} has role {speaker!r}; expected one of {sorted(_ROLES)}",
        )
    if role == "system" and index != 0:
        raise ConversationError(sample_id, f"message {index}: a system message must come first")
    text = item.get("value", item.get("content"))
    if text is not None and not isinstance(text, str):
        raise ConversationError(
            sample_id, f"message {index} has a {type(text).__name__} value, not text"
        )
    return Message(role=role, text=text, index=index)
