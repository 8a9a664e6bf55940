"""The stack equals a direct re-statement of SPHINX's `encode_image` in plain torch ops, on tiny
encoders, for 1 view and for 5 views (global + 2x2). The re-statement follows the reference
code: normalise once with the CLIP statistics, interpolate that tensor, re-normalise for DINOv2,
repeat the ConvNeXt map, prepend its mean, concatenate channels, Linear + LayerNorm, project the
Q-Former tokens, concatenate [queries ; grid], wrap in start/end."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from sphinx_mllm.encoders import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_to_imagenet
from sphinx_mllm.encoders.transforms import pil_to_tensor
from sphinx_mllm.mixer import padded_resize
from tests.mixer.tiny_sphinx import TINY_BASE, tiny_sphinx_stack


def linear_layernorm(projector, features):
    linear, norm = projector.layers
    return F.layer_norm(
        F.linear(features, linear.weight, linear.bias),
        norm.normalized_shape,
        norm.weight,
        norm.bias,
        norm.eps,
    )


def sphinx_encode_image(stack, image: Image.Image, grid: int) -> torch.Tensor:
    side = TINY_BASE * grid
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    image = (pil_to_tensor(padded_resize(image, side)) - mean) / std
    views = (
        [image]
        if grid == 1
        else [F.interpolate(image[None], size=(TINY_BASE, TINY_BASE), mode="bicubic")[0]]
    )
    for row in range(grid if grid > 1 else 0):
        for col in range(grid):
            views.append(
                image[
                    :,
                    row * TINY_BASE : (row + 1) * TINY_BASE,
                    col * TINY_BASE : (col + 1) * TINY_BASE,
                ]
            )
    views = torch.stack(views)
    enc = stack.encoders
    clip = enc["clip"](views).tokens
    convnext_map = enc["convnext"](F.interpolate(views, size=(64, 64), mode="nearest")).grid_map
    convnext_map = convnext_map.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    convnext = convnext_map.flatten(2).transpose(1, 2)
    convnext = torch.cat([convnext.mean(dim=1, keepdim=True), convnext], dim=1)
    dinov2 = enc["dinov2"](clip_to_imagenet(views)).tokens
    qformer = enc["qformer"](views).tokens
    mixer = stack.mixer
    grid_tokens = linear_layernorm(
        mixer.grid_projector, torch.cat([clip, convnext, dinov2], dim=-1)
    )
    query_tokens = linear_layernorm(mixer.query_projectors["qformer"], qformer)
    count = views.shape[0]
    start = mixer.format.start.expand(count, -1, -1)
    end = mixer.format.end.expand(count, -1, -1)
    return torch.cat([start, query_tokens, grid_tokens, end], dim=1).flatten(0, 1)


@pytest.mark.parametrize("grid", [1, 2])
@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
@torch.no_grad()
def test_stack_equals_the_sphinx_recipe(grid, photo):
    torch.manual_seed(0)
    stack = tiny_sphinx_stack(grid)
    image = Image.fromarray(getattr(data, photo)())
    expected = sphinx_encode_image(stack, image, grid)
    output = stack.encode_images([image])
    views = 1 if grid == 1 else 5
    assert expected.shape == (views * (1 + 4 + 17 + 1), 48)
    assert output.tokens.shape == (1, *expected.shape)
    torch.testing.assert_close(output.tokens[0], expected, rtol=1e-4, atol=1e-5)
