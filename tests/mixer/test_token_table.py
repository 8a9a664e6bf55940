"""The SPHINX token table, from the real-size encoder presets on the meta device: declared counts
equal the published numbers and the shapes a forward produces."""

import pytest
import torch

from sphinx_mllm.mixer import sphinx_visual_stack

TOKEN_TABLE = {
    "sphinx": (224, 291),
    "sphinx-1k": (448, 1455),
    "sphinx-2k": (672, 2910),
    "sphinx-tiny": (512, 259),
    "sphinx-tiny-1k": (1024, 1295),
    "sphinx-1k-pooled": (448, 687),
}


@pytest.mark.parametrize("variant", sorted(TOKEN_TABLE))
def test_declared_tokens_match_the_table_and_the_forward(variant):
    side, tokens = TOKEN_TABLE[variant]
    stack = sphinx_visual_stack(variant, out_dim=5120, device="meta")
    assert stack.num_tokens() == tokens
    layout = stack.layout((side, side))
    assert layout.canvas_size == (side, side)
    base = stack.splitter.base_size
    views = torch.empty(2, layout.num_views, 3, base, base, device="meta")
    output = stack(views)
    assert tuple(output.tokens.shape) == (2, tokens, 5120)
    assert output.lengths == [tokens, tokens]
    assert output.segments[0][-1].end == tokens


def test_sphinx_visual_parameters_and_view_layout():
    stack = sphinx_visual_stack("sphinx", device="meta")
    encoders = sum(p.numel() for p in stack.encoders.parameters())
    mixer = sum(p.numel() for p in stack.mixer.parameters())
    # ViT-L 0.30B + ConvNeXt-XXL 0.85B + DINOv2-g 1.13B + BLIP-2 1.09B
    assert encoders == 303_966_208 + 846_543_744 + 1_134_769_664 + 1_091_114_496
    # visual_proj Linear(5632, 5120) + LN, Q-Former Linear(768, 5120) + LN, start/end
    assert mixer == (5632 * 5120 + 5120 + 2 * 5120) + (768 * 5120 + 5120 + 2 * 5120) + 2 * 5120
    labels = [(s.label, s.end - s.start) for s in stack.segments(["global"])]
    assert labels == [("start", 1), ("blip2_qformer_opt2_7b", 32), ("grid", 257), ("end", 1)]
