"""Task builders: reader records -> validated LLaVA-style samples with SPHINX's instructions."""

from sphinx_mllm.data.tasks.base import BuildStats, Instructions, Sample, TaskBuilder, validate

__all__ = ["BuildStats", "Instructions", "Sample", "TaskBuilder", "validate"]
