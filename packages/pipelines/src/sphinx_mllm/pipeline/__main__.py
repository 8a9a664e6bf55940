"""`python -m sphinx_mllm.pipeline` runs the `sphinx-pipeline` command (as torchrun needs)."""

from sphinx_mllm.pipeline.cli import main

main()
