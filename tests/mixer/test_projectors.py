"""Projectors: a conformance sweep over the registry, SPHINX's linear_ln, clear errors."""

import pytest
import torch
from torch import nn

from sphinx_mllm.mixer import create_projector, list_projectors


@pytest.mark.parametrize("name", list_projectors())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_projector_maps_width_and_keeps_dtype(name, dtype):
    projector = create_projector(name, 16, 16, dtype=dtype)
    features = torch.randn(2, 5, 16, dtype=dtype)
    out = projector(features)
    assert out.shape == (2, 5, 16)
    assert out.dtype == dtype
    assert (projector.in_dim, projector.out_dim) == (16, 16)


@pytest.mark.parametrize("name", list_projectors())
def test_every_projector_rejects_a_wrong_input_width(name):
    projector = create_projector(name, 16, 16)
    with pytest.raises(
        ValueError, match=rf"Projector '{name}' expects features of width 16.*\(2, 5, 12\)"
    ):
        projector(torch.randn(2, 5, 12))


@pytest.mark.parametrize("name", list_projectors())
def test_every_projector_builds_on_the_meta_device(name):
    projector = create_projector(name, 64, 64, device="meta")
    assert all(parameter.is_meta for parameter in projector.parameters())


@pytest.mark.parametrize("name", list_projectors())
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_every_projector_rejects_non_positive_widths(name, bad):
    with pytest.raises(ValueError, match="must be a positive int"):
        create_projector(name, bad, 16)


def test_linear_ln_is_linear_then_layernorm():
    torch.manual_seed(0)
    projector = create_projector("linear_ln", 24, 8)
    reference_linear, reference_norm = nn.Linear(24, 8), nn.LayerNorm(8)
    reference_linear.load_state_dict(projector.layers[0].state_dict())
    reference_norm.load_state_dict(projector.layers[1].state_dict())
    features = torch.randn(3, 7, 24)
    assert torch.equal(projector(features), reference_norm(reference_linear(features)))


def test_mlp2x_gelu_has_llava_shapes():
    projector = create_projector("mlp2x_gelu", 1024, 4096, device="meta")
    shapes = {name: tuple(p.shape) for name, p in projector.named_parameters()}
    assert shapes == {
        "layers.0.weight": (4096, 1024),
        "layers.0.bias": (4096,),
        "layers.2.weight": (4096, 4096),
        "layers.2.bias": (4096,),
    }


def test_identity_refuses_different_widths():
    with pytest.raises(ValueError, match="cannot map width 8 to 16"):
        create_projector("identity", 8, 16)
