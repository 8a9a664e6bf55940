"""Resizing views as SPHINX's released code does: the float16 cast before `F.interpolate`, and
views resampled from the whole canvas rather than view by view."""

import pytest
import torch
import torch.nn.functional as F

from sphinx_mllm.encoders import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, create_encoder
from sphinx_mllm.encoders.transforms import normalize
from sphinx_mllm.mixer import EncoderStream, VisualStack
from sphinx_mllm.mixer.resizing import canvas_views, resize_views


def clip_normalised(pixels):
    return normalize(pixels, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


@pytest.fixture
def canvas():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_half_precision_resize_rounds_as_the_reference(canvas, mode):
    """The reference resizes its CLIP-normalised tensor in float16; so does the option, to
    float32 rounding, and the rounding is visible against a float32 resize."""
    ours = resize_views(canvas, (40, 40), mode, half_precision=True)
    reference = F.interpolate(clip_normalised(canvas).half(), size=(40, 40), mode=mode).float()
    assert (clip_normalised(ours) - reference).abs().max() < 1e-5
    plain = resize_views(canvas, (40, 40), mode)
    assert (clip_normalised(plain) - reference).abs().max() > 1e-4
    # at an equal size only the rounding remains, as in the reference's identity resize
    same = resize_views(canvas, (64, 64), mode, half_precision=True)
    assert torch.allclose(clip_normalised(same), clip_normalised(canvas).half().float(), atol=1e-5)


def test_canvas_views_resample_across_tile_borders(canvas):
    tiles = [canvas[..., r : r + 32, c : c + 32] for r in (0, 32) for c in (0, 32)]
    views = torch.cat([torch.zeros(1, 3, 32, 32), *tiles])  # the global view is not read
    made = canvas_views(views, (16, 16), "bicubic")
    assert made.shape == (5, 3, 16, 16)
    assert torch.allclose(made[0], F.interpolate(canvas, size=(16, 16), mode="bicubic")[0])
    whole = F.interpolate(canvas, size=(32, 32), mode="bicubic")
    expected = [whole[0, :, r : r + 16, c : c + 16] for r in (0, 16) for c in (0, 16)]
    assert torch.allclose(made[1:], torch.stack(expected))
    # resizing each tile on its own differs at the tile borders
    per_view = F.interpolate(torch.cat(tiles), size=(16, 16), mode="bicubic")
    assert (per_view - made[1:]).abs().max() > 1e-3


def test_canvas_views_need_a_square_tile_grid():
    with pytest.raises(ValueError, match="square grid"):
        canvas_views(torch.zeros(3, 3, 8, 8), (4, 4), "bicubic")


def test_a_stream_resampling_from_the_canvas(canvas):
    encoder = create_encoder("tiny_dinov2", img_size=32, patch_size=8)
    stream = EncoderStream(encoder, image_size=32, resample_from="canvas")
    stack = VisualStack(
        "global_grid", [stream], "channel_concat", out_dim=8, splitter_options={"base_size": 32}
    )
    views = torch.cat(
        [F.interpolate(canvas, size=(32, 32), mode="bicubic")]
        + [canvas[..., r : r + 32, c : c + 32] for r in (0, 32) for c in (0, 32)]
    )
    fed = stack._encode(stack.stream_names[0], views, [5])
    expected = encoder(
        normalize(canvas_views(views, (32, 32), "bicubic"), encoder.mean, encoder.std)
    )
    assert torch.equal(fed.tokens, expected.tokens)
    with pytest.raises(ValueError, match="resample_from"):
        EncoderStream(encoder, resample_from="image")
