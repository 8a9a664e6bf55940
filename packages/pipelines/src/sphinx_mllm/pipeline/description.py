"""What a model is made of, without running it: the component table, parameter counts (total and
trainable per stage) and visual tokens per image. Real-size presets are described from the meta
device, so `describe("sphinx")` takes seconds and no memory."""

from __future__ import annotations

from typing import Any

from torch import nn

from sphinx_mllm.mixer import Projector
from sphinx_mllm.pipeline.building import build_model, resolve_config
from sphinx_mllm.pipeline.config import ModelConfig
from sphinx_mllm.pipeline.model import SphinxModel
from sphinx_mllm.pipeline.stages import STAGES, trainable_parameter_count


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_model(model: SphinxModel) -> dict[str, Any]:
    """A plain-data description of `model` (JSON-ready)."""
    visual = model.visual
    components = []
    for name, stream in visual.streams.items():
        encoder = stream.encoder
        side = stream.size
        components.append(
            {
                "role": "encoder",
                "name": name,
                "detail": f"fed {side[0]}x{side[1]} ({stream.resize}), "
                f"{encoder.num_tokens(side)} tokens x {encoder.embed_dim}"
                + (", frozen" if encoder.frozen else ", trainable"),
                "parameters": _count(encoder),
            }
        )
    splitter = visual.splitter
    components.append(
        {
            "role": "splitter",
            "name": type(splitter).__name__,
            "detail": f"base {splitter.base_size}px, {len(visual.layout().kinds)} view(s)",
            "parameters": 0,
        }
    )
    mixer = visual.mixer
    projectors = sorted(
        {module.name for module in mixer.modules() if isinstance(module, Projector)}
    )
    components.append(
        {
            "role": "mixer",
            "name": type(mixer).__name__,
            "detail": f"projectors {', '.join(projectors) or '-'}, out width {mixer.out_dim}",
            "parameters": _count(mixer),
        }
    )
    config = model.llm.config
    components.append(
        {
            "role": "llm",
            "name": model.model_config.llm.name if model.model_config else type(model.llm).__name__,
            "detail": f"{config.model_type}, {config.num_hidden_layers} layers, width "
            f"{config.hidden_size}, vocabulary {config.vocab_size}",
            "parameters": _count(model.llm),
        }
    )
    return {
        "name": model.model_config.name if model.model_config else "custom",
        "placement": None if model.processor is None else model.processor.placement,
        "template": None if model.processor is None else model.processor.template.name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "image_token_id": model.image_token_id,
        "visual_tokens_per_image": model.num_visual_tokens(),
        "components": components,
        "parameters": {
            "total": _count(model),
            "trainable_by_stage": {
                stage: trainable_parameter_count(model, stage) for stage in STAGES
            },
        },
    }


def describe(config: ModelConfig | str) -> dict[str, Any]:
    """Describe a preset or config, built on the meta device."""
    return describe_model(build_model(resolve_config(config), device="meta"))


def format_description(description: dict[str, Any]) -> str:
    """The description as a table for a terminal."""
    lines = [
        f"{description['name']}: {description['visual_tokens_per_image']} visual tokens per "
        f"image, placement {description['placement']}, template {description['template']}, "
        f"{description['dtype']}",
        "",
        f"  {'role':<9} {'component':<28} {'parameters':>16}  detail",
    ]
    for row in description["components"]:
        lines.append(
            f"  {row['role']:<9} {row['name']:<28} {row['parameters']:>16,}  {row['detail']}"
        )
    parameters = description["parameters"]
    lines += ["", f"  total parameters {parameters['total']:,}", "  trainable by stage:"]
    for stage, count in parameters["trainable_by_stage"].items():
        lines.append(f"    {stage:<9} {count:>16,}")
    return "\n".join(lines)
