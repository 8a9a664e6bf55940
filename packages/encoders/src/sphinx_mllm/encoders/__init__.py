"""Visual encoder adapters for SPHINX-style MLLMs; usable without other sphinx packages."""

from sphinx_mllm.encoders.registry import ENCODERS, get_encoder, list_encoders

__all__ = ["ENCODERS", "get_encoder", "list_encoders"]
