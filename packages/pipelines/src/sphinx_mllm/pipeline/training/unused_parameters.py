"""Which trainable parameters a training step leaves without a gradient, decided before training
from the model and the data, so that DDP searches for them (`find_unused_parameters`, a walk of
the autograd graph after every backward, and a warning on every run that has none) only when a
step can leave one out.

Two things do, among the built-in models and stages:

- text-only batches (pretraining with text data) leave the visual stack out of a step: it
  matters when a visual parameter trains (the mixer trains in every built-in stage);
- some encoders carry parts their tokens do not use, which matters when encoders train (`full`,
  or a custom stage): CLIP ViT's output projection (`proj`), CLIP ConvNeXt's head projection,
  the final norm of Hugging Face CLIP and SigLIP towers, SigLIP's attention pool and Hugging
  Face DINOv2's mask token. The demo's ResNet and ConvNeXt, timm DINOv2 and the Q-Former use
  every parameter, and so do the mixer and the LLM (LoRA adapters included).

The second is found by tracing one blank image through the visual stack in eval mode (nothing
changes: no batch-norm statistics, no random numbers) and collecting the parameters its autograd
graph reaches; no backward runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sphinx_mllm.pipeline.training.data import TEXT_ONLY


def needs_unused_parameter_search(model: Any, data_types: Iterable[str]) -> bool:
    """Whether a step can leave a trainable parameter of `model` without a gradient, when the
    data's global batches are of `data_types` (`image-text`, `text-only`)."""
    visual = getattr(model, "visual", None)
    if visual is None or not any(p.requires_grad for p in visual.parameters()):
        return False
    return TEXT_ONLY in set(data_types) or bool(unused_visual_parameters(model))


def unused_visual_parameters(model: Any) -> list[str]:
    """Names of the trainable visual-stack parameters that the visual tokens of an image do not
    depend on (none when nothing visual trains)."""
    from PIL import Image

    visual = getattr(model, "visual", None)
    if visual is None:
        return []
    trainable = {name: p for name, p in visual.named_parameters() if p.requires_grad}
    if not trainable:
        return []
    modes = {module: module.training for module in visual.modules()}
    visual.eval()
    try:
        with torch.enable_grad():
            views, _ = visual.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))
            tokens = visual([views.to(model.device)]).tokens
            reached = _graph_leaves(tokens)
    finally:
        for module, training in modes.items():
            module.training = training
    return sorted(f"visual.{name}" for name, p in trainable.items() if id(p) not in reached)


def _graph_leaves(output: torch.Tensor) -> set[int]:
    """The ids of the leaf tensors (parameters) the autograd graph of `output` accumulates
    gradients into."""
    leaves: set[int] = set()
    seen: set[Any] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, nn.Parameter | torch.Tensor):
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves
