"""The checks every registered encoder must pass; `test_conformance.py` sweeps the registry with
them, so registering an encoder (a built-in or a plugin) is enough to get it tested."""

from __future__ import annotations

import torch
from PIL import Image

from sphinx_mllm.encoders import VisualEncoder, create_encoder


def check_declared_shapes(encoder: VisualEncoder, device: str) -> None:
    """Tokens of a forward at the input size have the declared count, width, grid and dtype."""
    batch = 2
    pixels = torch.randn(batch, 3, *encoder.input_size, device=device)
    output = encoder(pixels)
    assert tuple(output.tokens.shape) == (batch, encoder.num_tokens(), encoder.embed_dim), (
        f"{encoder.name}: tokens {tuple(output.tokens.shape)}, declared "
        f"{(batch, encoder.num_tokens(), encoder.embed_dim)}"
    )
    assert output.grid == encoder.grid_size()
    assert output.leading_token == encoder.leading_token
    assert output.tokens.dtype == encoder.dtype
    if output.grid is not None:
        assert output.grid_map.shape == (batch, encoder.embed_dim, *output.grid)


def check_frozen_by_default(encoder: VisualEncoder) -> None:
    assert encoder.frozen
    assert not encoder.training
    assert not any(parameter.requires_grad for parameter in encoder.parameters())
    encoder.train()
    assert not encoder.training, "train() must keep a frozen encoder in eval mode"


def check_transform(encoder: VisualEncoder) -> None:
    """A PIL image of another size and aspect becomes pixels of the declared input size."""
    image = Image.new("RGB", (97, 61), color=(200, 30, 90))
    pixels = encoder.transform(image)
    assert pixels.shape == (3, *encoder.input_size)
    assert pixels.dtype == torch.float32


def check_runs_and_trains(name: str) -> None:
    """On the CPU: bf16 in, bf16 out; unfreezing lets gradients reach the weights."""
    encoder = create_encoder(name, dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.parameters() if p.is_floating_point()} == {torch.bfloat16}
    check_declared_shapes(encoder, "cpu")
    trainable = create_encoder(name, frozen=False)
    assert trainable.training and not trainable.frozen
    output = trainable(torch.randn(2, 3, *trainable.input_size))
    output.tokens.float().square().mean().backward()
    with_grad = [p for p in trainable.parameters() if p.grad is not None]
    assert with_grad, f"{name}: no parameter received a gradient after unfreezing"
    frozen = create_encoder(name)
    assert frozen(torch.randn(1, 3, *frozen.input_size)).tokens.requires_grad is False


def check_encoder(name: str) -> None:
    """Every check that can run on the meta device, at the encoder's real size."""
    encoder = create_encoder(name, device="meta")
    assert isinstance(encoder, VisualEncoder)
    assert all(parameter.is_meta for parameter in encoder.parameters())
    check_declared_shapes(encoder, "meta")
    check_frozen_by_default(encoder)
    check_transform(encoder)
