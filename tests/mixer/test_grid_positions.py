"""Fixed 2D sine-cosine position features on grid tokens (`grid_positions="sincos"`)."""

import math

import pytest
import torch

from sphinx_mllm.mixer.view_tokens import ViewTokenFormat, sincos_2d


def test_sincos_features_encode_row_and_column():
    features = sincos_2d((3, 4), 8)
    assert features.shape == (12, 8)
    row, col = 1, 2
    token = features[row * 4 + col]
    # first half: row (sin, cos at frequencies 1 and 1/100); second half: column
    expected = [
        math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100),
        math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
    ]  # fmt: skip
    torch.testing.assert_close(token, torch.tensor(expected), rtol=0, atol=1e-6)
    assert len({tuple(row.tolist()) for row in features}) == 12  # every cell differs


def test_grid_tokens_get_the_features_scaled_to_their_own_views_rms():
    plain = ViewTokenFormat(8, wrap_views=False)
    positioned = ViewTokenFormat(8, wrap_views=False, grid_positions="sincos")
    tokens = torch.randn(2, 1 + 6, 8) * torch.tensor([1.0, 5.0]).view(2, 1, 1)  # 2x3 grids
    base = plain.format_grid(tokens, (2, 3), True, "global")
    out = positioned.format_grid(tokens, (2, 3), True, "global")
    torch.testing.assert_close(out[:, 0], base[:, 0])  # the leading token is left alone
    for view in range(2):
        rms = tokens[view, 1:].pow(2).mean().sqrt()
        torch.testing.assert_close(out[view, 1:] - base[view, 1:], sincos_2d((2, 3), 8) * rms)
    alone = positioned.format_grid(tokens[1:], (2, 3), True, "global")
    assert torch.equal(alone[0], out[1])  # a view's tokens do not depend on its batch


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="grid_positions"):
        ViewTokenFormat(8, wrap_views=False, grid_positions="learned")
    with pytest.raises(ValueError, match="divisible by 4"):
        ViewTokenFormat(6, wrap_views=False, grid_positions="sincos")
