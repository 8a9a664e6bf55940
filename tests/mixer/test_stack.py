"""The visual stack: gradients reach only what trains, dtype and batching, anyres batches of
different view counts, and clear errors for bad compositions and inputs."""

import itertools

import pytest
import torch
from PIL import Image
from skimage import data

from sphinx_mllm.encoders import create_encoder
from sphinx_mllm.mixer import EncoderStream, VisualStack
from sphinx_mllm.mixer.channel_concat import ChannelConcatMixer
from sphinx_mllm.mixer.mixing import StreamSpec
from tests.mixer.tiny_sphinx import tiny_sphinx_stack

ASTRONAUT = Image.fromarray(data.astronaut())
COFFEE = Image.fromarray(data.coffee())


def test_with_frozen_encoders_only_projectors_and_start_end_get_gradients():
    stack = tiny_sphinx_stack(grid=2)
    stack.encode_images([ASTRONAUT, COFFEE]).tokens.square().mean().backward()
    trained = {name for name, p in stack.named_parameters() if p.grad is not None}
    assert trained == {
        "mixer.grid_projector.layers.0.weight",
        "mixer.grid_projector.layers.0.bias",
        "mixer.grid_projector.layers.1.weight",
        "mixer.grid_projector.layers.1.bias",
        "mixer.query_projectors.qformer.layers.0.weight",
        "mixer.query_projectors.qformer.layers.0.bias",
        "mixer.query_projectors.qformer.layers.1.weight",
        "mixer.query_projectors.qformer.layers.1.bias",
        "mixer.format.start",
        "mixer.format.end",
    }


def test_unfreezing_an_encoder_makes_it_train():
    stack = tiny_sphinx_stack()
    stack.encoders["dinov2"].unfreeze()
    stack.encode_images([ASTRONAUT]).tokens.square().mean().backward()
    dinov2 = [p.grad is not None for p in stack.encoders["dinov2"].parameters()]
    assert all(dinov2)
    assert all(p.grad is None for p in stack.encoders["clip"].parameters())


def test_tokens_come_out_in_the_projector_dtype_with_fp32_encoders():
    streams = [
        EncoderStream(create_encoder("tiny_clip_vit")),
        EncoderStream(create_encoder("tiny_hf_dinov2"), image_size=56),
    ]
    stack = VisualStack(
        "single",
        streams,
        "channel_concat",
        out_dim=16,
        splitter_options={"base_size": 32},
        dtype=torch.bfloat16,
    )
    assert stack.encoders["tiny_clip_vit"].dtype == torch.float32
    assert stack.encode_images([ASTRONAUT]).tokens.dtype == torch.bfloat16


def test_every_view_of_a_batch_passes_each_encoder_once(monkeypatch):
    stack = tiny_sphinx_stack(grid=2)
    calls = []
    for name, encoder in stack.encoders.items():
        original = encoder.forward
        monkeypatch.setattr(
            encoder,
            "forward",
            lambda pixels, n=name, f=original: calls.append((n, pixels.shape[0])) or f(pixels),
        )
    stack.encode_images([ASTRONAUT, COFFEE, ASTRONAUT])
    assert sorted(calls) == sorted((name, 15) for name in stack.encoders)


def test_batched_images_equal_one_by_one():
    stack = tiny_sphinx_stack(grid=2)
    together = stack.encode_images([ASTRONAUT, COFFEE]).tokens
    alone = torch.cat([stack.encode_images([image]).tokens for image in (ASTRONAUT, COFFEE)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_anyres_batches_images_with_different_view_counts():
    streams = [EncoderStream(create_encoder("tiny_clip_vit"))]
    stack = VisualStack(
        "anyres",
        streams,
        "sequence_concat",
        out_dim=16,
        splitter_options={"base_size": 32, "grids": [(1, 2), (2, 1), (2, 2)]},
        mixer_options={"row_separators": True},
    )
    wide, square = Image.new("RGB", (300, 100)), Image.new("RGB", (200, 200))
    output = stack.encode_images([wide, square])
    per_view = 1 + 4 * (4 + 1)  # CLS + 4 rows of 4 tokens and a separator
    assert [stack.num_tokens(wide.size), stack.num_tokens(square.size)] == [
        3 * per_view,
        5 * per_view,
    ]
    assert output.lengths == [3 * per_view, 5 * per_view]
    assert output.tokens.shape == (2, 5 * per_view, 16)
    assert output.mask.sum(1).tolist() == output.lengths
    assert torch.equal(output.tokens[0, 3 * per_view :], torch.zeros(2 * per_view, 16))
    assert [s.view for s in output.segments[1]] == [0, 1, 2, 3, 4]


def test_segments_name_every_token_range():
    stack = tiny_sphinx_stack(grid=2)
    segments = stack.encode_images([ASTRONAUT]).segments[0]
    assert [(s.view, s.label) for s in segments[:4]] == [
        (0, "start"),
        (0, "qformer"),
        (0, "grid"),
        (0, "end"),
    ]
    assert all(a.end == b.start for a, b in itertools.pairwise(segments))
    assert segments[-1].end == stack.num_tokens() == 5 * 23


def test_tile_pooling_and_row_separators_change_only_tiles_and_grids():
    stack = tiny_sphinx_stack(grid=2, tile_pool=(2, 2), row_separators=True)
    assert stack.mixer.num_tokens("global") == 1 + 4 + (1 + 4 * 5) + 1
    assert stack.mixer.num_tokens("tile") == 1 + 4 + (1 + 2 * 3) + 1
    assert stack.encode_images([COFFEE]).tokens.shape[1] == stack.num_tokens()


def test_grids_that_cannot_be_aligned_are_refused():
    specs = [StreamSpec("a", 8, (4, 4), True, 17), StreamSpec("b", 8, (3, 3), True, 10)]
    with pytest.raises(ValueError, match=r"Cannot align the 3x3 grid of 'b' to 4x4 by repetition"):
        ChannelConcatMixer(specs, 16, align="repeat")
    with pytest.raises(ValueError, match=r"to the larger 4x4 by area averaging"):
        ChannelConcatMixer(specs, 16, align="area")
    assert ChannelConcatMixer(specs, 16, align="bilinear").num_tokens() == 1 + 17 + 1
    with pytest.raises(ValueError, match="Unknown grid alignment 'cubic'"):
        ChannelConcatMixer(specs, 16, align="cubic")


def test_a_projector_whose_input_width_does_not_match_is_refused():
    stack = tiny_sphinx_stack()
    features = torch.randn(1, 17, 100)
    with pytest.raises(ValueError, match=r"Projector 'linear_ln' expects features of width 128"):
        stack.mixer.grid_projector(features)


def test_outputs_that_do_not_fit_the_declared_streams_are_refused():
    stack = tiny_sphinx_stack()
    views = torch.rand(1, 3, 32, 32)
    outputs = [stack._encode(name, views) for name in stack.stream_names]
    with pytest.raises(ValueError, match="mixes 4 streams"):
        stack.mixer(outputs[:3])
    outputs[1], outputs[0] = outputs[0], outputs[1]
    with pytest.raises(
        ValueError, match="stream 'clip' was declared with 17 tokens of width 32 on grid"
    ):
        stack.mixer(outputs)


def test_views_smaller_than_the_base_are_refused():
    stack = tiny_sphinx_stack()
    with pytest.raises(ValueError, match=r"views must be \[V, 3, 32, 32\] .* got \(1, 3, 16, 16\)"):
        stack(torch.rand(1, 1, 3, 16, 16))


def test_a_mixer_built_for_other_streams_is_refused():
    specs = [StreamSpec("someone_else", 32, (4, 4), True, 17)]
    with pytest.raises(ValueError, match="The mixer was built for streams"):
        VisualStack(
            "single",
            [create_encoder("tiny_clip_vit")],
            ChannelConcatMixer(specs, 8),
            splitter_options={"base_size": 32},
        )


def test_a_mixer_by_name_needs_the_llm_width():
    with pytest.raises(ValueError, match="needs out_dim"):
        VisualStack(
            "single", ["tiny_clip_vit"], "channel_concat", splitter_options={"base_size": 32}
        )


def test_a_bad_resize_mode_is_refused():
    with pytest.raises(ValueError, match="Unknown resize 'lanczos'"):
        EncoderStream(create_encoder("tiny_clip_vit"), resize="lanczos")
