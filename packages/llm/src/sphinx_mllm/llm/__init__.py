"""The LLM side of SPHINX: weight merging (SPHINX mixes LLMs trained on real-world and on
synthetic data) and the LLM backbones. Knows nothing of images.

`sphinx_mllm.llm.merging` holds the merge algebra and `sphinx-merge`; `load_llm` builds a
Hugging Face causal LM (imported on first use: transformers takes seconds to import).
"""

from typing import Any

from sphinx_mllm.llm.language_models import (
    LANGUAGE_MODELS,
    get_language_model,
    list_language_models,
)
from sphinx_mllm.llm.registry import MERGE_METHODS, get_merge_method, list_merge_methods

__all__ = [
    "LANGUAGE_MODELS",
    "MERGE_METHODS",
    "get_language_model",
    "get_merge_method",
    "list_language_models",
    "list_merge_methods",
    "load_llm",
]


def __getattr__(name: str) -> Any:
    if name == "load_llm":
        from sphinx_mllm.llm.backbones import load_llm

        return load_llm
    raise AttributeError(f"module 'sphinx_mllm.llm' has no attribute {name!r}")
