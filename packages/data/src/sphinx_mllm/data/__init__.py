"""Task-instruction data for SPHINX-style multi-modal LLMs; importing it never imports torch."""

from sphinx_mllm.data.registry import (
    CHAT_TEMPLATES,
    TASK_BUILDERS,
    get_chat_template,
    get_task_builder,
    list_chat_templates,
    list_task_builders,
)

__all__ = [
    "CHAT_TEMPLATES",
    "TASK_BUILDERS",
    "get_chat_template",
    "get_task_builder",
    "list_chat_templates",
    "list_task_builders",
]
