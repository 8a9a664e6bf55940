"""Weight merging, streaming and exact: the merge algebra, methods, configs, `sphinx-merge`."""

from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.llm.merging.config import ConfigError, load_config
from sphinx_mllm.llm.merging.expression import Expression, Model
from sphinx_mllm.llm.merging.finite import NonFiniteError
from sphinx_mllm.llm.merging.lora import lora
from sphinx_mllm.llm.merging.parameters import Filtered, Gradient
from sphinx_mllm.llm.merging.plan import MergePlanError
from sphinx_mllm.llm.merging.runner import MergeRecipe, MergeReport, run_merge
from sphinx_mllm.llm.merging.stacking import layer_stack

__all__ = [
    "ConfigError",
    "Expression",
    "Filtered",
    "Gradient",
    "MergePlanError",
    "MergeRecipe",
    "MergeReport",
    "Model",
    "ModelCheckpoint",
    "NonFiniteError",
    "layer_stack",
    "load_config",
    "lora",
    "run_merge",
]
