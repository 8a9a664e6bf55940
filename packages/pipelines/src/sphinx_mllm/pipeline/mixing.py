"""SPHINX's weight mix of two checkpoints of one model: the LLM weights interpolated,
`beta * first + (1 - beta) * second`, everything else copied from `first`. The merge streams
tensor by tensor through sphinx-llm (fp32 arithmetic, rounded once to the stored dtype), which
reads a sphinx-pipeline checkpoint like any model directory and copies its config, manifest and
tokenizer along."""

from __future__ import annotations

from pathlib import Path

from sphinx_mllm.llm.merging import MergeRecipe, Model, run_merge
from sphinx_mllm.pipeline.checkpoint import describe_checkpoint

LLM_TENSORS = "llm.*"


def mix_llm_weights(
    first: str | Path, second: str | Path, out: str | Path, *, beta: float, overwrite: bool = False
) -> str:
    """Write the mixed checkpoint to `out` (atomically); returns a summary of the merge."""
    first, second = Path(first).expanduser(), Path(second).expanduser()
    config_a = describe_checkpoint(first).model_config
    config_b = describe_checkpoint(second).model_config
    if config_a.llm != config_b.llm:
        raise ValueError(
            f"{first} and {second} hold different LLMs ({config_a.llm} vs {config_b.llm}); "
            "weights mix only between checkpoints of one architecture"
        )
    a, b = Model(first, "first"), Model(second, "second")
    recipe = MergeRecipe(
        beta * a + (1.0 - beta) * b,
        reference=a,
        include=(LLM_TENSORS,),
        copy_from="reference",
        description={"method": "sphinx_weight_mix", "beta": beta},
    )
    report = run_merge(recipe, out, force=overwrite)
    return f"{report.summary()}\nmixed checkpoint (beta {beta}): {report.output}"
