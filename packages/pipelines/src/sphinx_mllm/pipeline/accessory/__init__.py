"""LLaMA2-Accessory SPHINX releases: read (`release`), described (`architecture`), mapped
(`weights`) and converted (`conversion`) into the toolkit's own components."""

from sphinx_mllm.pipeline.accessory.conversion import from_accessory, import_accessory
from sphinx_mllm.pipeline.accessory.release import (
    LLAMA_TYPES,
    AccessoryImportError,
    AccessoryRelease,
)

__all__ = [
    "LLAMA_TYPES",
    "AccessoryImportError",
    "AccessoryRelease",
    "from_accessory",
    "import_accessory",
]
