"""The built-in merge methods (registered through the entry-point group
`sphinx_mllm_merge_methods`)."""
