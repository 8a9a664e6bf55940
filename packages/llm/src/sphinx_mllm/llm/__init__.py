"""LLM weight merging (SPHINX's mixing of real- and synthetic-data LLMs) and LLM backbones."""

from sphinx_mllm.llm.registry import MERGE_METHODS, get_merge_method, list_merge_methods

__all__ = ["MERGE_METHODS", "get_merge_method", "list_merge_methods"]
