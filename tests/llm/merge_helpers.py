"""Small Llama-shaped checkpoints written straight to disk, for the merge tests."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sphinx_mllm.llm.merging.cli import main as merge_cli

LAYER_SHAPES = {
    "input_layernorm.weight": (16,),
    "self_attn.q_proj.weight": (16, 16),
    "self_attn.k_proj.weight": (8, 16),
    "self_attn.v_proj.weight": (8, 16),
    "self_attn.o_proj.weight": (16, 16),
    "post_attention_layernorm.weight": (16,),
    "mlp.gate_proj.weight": (32, 16),
    "mlp.up_proj.weight": (32, 16),
    "mlp.down_proj.weight": (16, 32),
}


def llama_tensors(
    seed: int, dtype: torch.dtype = torch.bfloat16, layers: int = 2
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(64, 16, generator=generator)}
    for layer in range(layers):
        for suffix, shape in LAYER_SHAPES.items():
            tensors[f"model.layers.{layer}.{suffix}"] = torch.randn(shape, generator=generator)
    tensors["model.norm.weight"] = torch.randn(16, generator=generator)
    tensors["lm_head.weight"] = torch.randn(64, 16, generator=generator)
    return {name: tensor.to(dtype) for name, tensor in tensors.items()}


def write_model(
    directory: Path, tensors: dict[str, torch.Tensor], *, layers: int = 2, tokenizer: bool = True
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in tensors.items()},
        str(directory / "model.safetensors"),
    )
    config = {
        "model_type": "llama",
        "num_hidden_layers": layers,
        "hidden_size": 16,
        "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (directory / "tokenizer.json").write_text('{"version": "1.0"}')
        (directory / "tokenizer_config.json").write_text("{}")
    return directory


def read_output(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def run_cli(*args: object) -> tuple[int, list[str]]:
    """`sphinx-merge ARGS` in this process: its exit status and the lines it wrote to stderr."""
    errors, output = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(output):
        code = merge_cli([str(arg) for arg in args])
    return code, errors.getvalue().splitlines()
