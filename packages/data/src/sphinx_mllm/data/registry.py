"""The registries of task builders and chat templates (groups `sphinx_mllm_task_builders`,
`sphinx_mllm_chat_templates`)."""

from typing import Any

from sphinx_mllm.core import ComponentRegistry

TASK_BUILDERS = ComponentRegistry("task_builders")
CHAT_TEMPLATES = ComponentRegistry("chat_templates")


def list_task_builders(pattern: str = "*") -> list[str]:
    """Registered task-builder names matching a shell wildcard, e.g. `"vqa*"`."""
    return TASK_BUILDERS.names(pattern)


def get_task_builder(name: str) -> Any:
    """The task builder registered as `name`; an unknown name raises with the close matches."""
    return TASK_BUILDERS.get(name)


def list_chat_templates(pattern: str = "*") -> list[str]:
    """Registered chat-template names matching a shell wildcard."""
    return CHAT_TEMPLATES.names(pattern)


def get_chat_template(name: str) -> Any:
    """The chat template registered as `name`; an unknown name raises with the close matches."""
    return CHAT_TEMPLATES.get(name)
