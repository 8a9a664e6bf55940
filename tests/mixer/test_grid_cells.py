"""Which visual token lies under which grid cell, and under which point of an image: every
mixer's cell table points at the token its grid cell became (leading tokens, query tokens,
start/end vectors, row separators and tile pooling in between), and the stack maps image points
through the padding of non-square images."""

import pytest
import torch

from sphinx_mllm.encoders import EncoderOutput
from sphinx_mllm.mixer import VisualStack
from sphinx_mllm.mixer.channel_concat import ChannelConcatMixer
from sphinx_mllm.mixer.mixing import StreamSpec
from sphinx_mllm.mixer.sequence_concat import SequenceConcatMixer

WIDTH = 8


def numbered_grid(views: int, grid: tuple[int, int], leading: bool) -> EncoderOutput:
    """Channel 0 of cell (r, c) holds 1 + r * cols + c; the leading token holds -1."""
    rows, cols = grid
    cells = torch.zeros(views, rows * cols, WIDTH)
    cells[:, :, 0] = 1 + torch.arange(rows * cols, dtype=torch.float32)
    lead = torch.full((views, int(leading), WIDTH), -1.0)
    return EncoderOutput(torch.cat([lead, cells], dim=1), grid, leading)


def queries(views: int, count: int) -> EncoderOutput:
    return EncoderOutput(torch.full((views, count, WIDTH), -2.0), None, False)


@pytest.mark.parametrize("row_separators", [False, True])
def test_channel_concat_cells_point_at_their_own_grid_tokens(row_separators):
    specs = [
        StreamSpec("queries", WIDTH, None, False, 3),
        StreamSpec("vit", WIDTH, (3, 4), True, 13),
    ]
    mixer = ChannelConcatMixer(
        specs, WIDTH, projector="identity", query_projector="identity",
        row_separators=row_separators,
    )  # fmt: skip
    tokens = mixer([queries(2, 3), numbered_grid(2, (3, 4), True)], "global")
    cells = mixer.grid_cells("global")
    assert list(cells) == ["grid"] and cells["grid"].shape == (3, 4)
    expected = 1 + torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert torch.equal(tokens[:, cells["grid"], 0], expected.expand(2, 3, 4))
    # start (1) + queries (3) + the leading token (1) come first
    assert int(cells["grid"][0, 0]) == 5
    assert int(cells["grid"][1, 0]) == 5 + 4 + int(row_separators)


def test_tile_cells_follow_the_pooled_grid():
    specs = [StreamSpec("vit", WIDTH, (4, 4), True, 17)]
    mixer = ChannelConcatMixer(
        specs, WIDTH, projector="identity", tile_pool=(2, 2), tile_pool_mode="area"
    )
    tokens = mixer([numbered_grid(1, (4, 4), True)], "tile")
    cells = mixer.grid_cells("tile")["grid"]
    assert cells.shape == (2, 2)
    numbers = 1 + torch.arange(16, dtype=torch.float32).reshape(4, 4)
    pooled = numbers.reshape(2, 2, 2, 2).mean(dim=(1, 3))  # each 2x2 block averaged
    assert torch.allclose(tokens[0, cells, 0], pooled)


def test_sequence_concat_has_one_cell_table_per_grid_encoder():
    specs = [
        StreamSpec("a", WIDTH, (2, 2), True, 5),
        StreamSpec("q", WIDTH, None, False, 2),
        StreamSpec("b", WIDTH, (3, 3), False, 9),
    ]
    mixer = SequenceConcatMixer(specs, WIDTH, projector="identity", wrap_views=True)
    outputs = [numbered_grid(1, (2, 2), True), queries(1, 2), numbered_grid(1, (3, 3), False)]
    tokens = mixer(outputs, "global")
    cells = mixer.grid_cells()
    assert sorted(cells) == ["a", "b"]
    for name, side in (("a", 2), ("b", 3)):
        expected = 1 + torch.arange(side * side, dtype=torch.float32).reshape(side, side)
        assert torch.equal(tokens[0, cells[name], 0], expected)
    assert int(cells["b"][0, 0]) == 1 + 5 + 2  # start, then a's 5 tokens, then 2 queries


def tiny_stack(**mixer_options) -> VisualStack:
    return VisualStack(
        "single",
        ["tiny_clip_vit"],
        "channel_concat",
        out_dim=16,
        splitter_options={"base_size": 32},
        mixer_options=mixer_options,
    )


def test_points_of_a_wide_image_map_through_its_padding():
    stack = tiny_stack()  # 32 px views, a 4x4 grid: [start, CLS, 16 cells, end]
    assert stack.mixer.grid_cells()["grid"].shape == (4, 4)
    # a 200x100 image is centred in a 200x200 square: rows 50..150 of the canvas hold it
    points = [(0, 0), (199, 99), (100, 49), (49.9, 50.1), (-5, 500)]
    tokens = stack.grid_tokens_at((200, 100), points)
    # canvas rows: 50 -> row 1, 149 -> row 2, 99 -> row 1, 100.1 -> row 2; clamped outside
    rows_cols = [(1, 0), (2, 3), (1, 2), (2, 0), (3, 0)]
    assert tokens.tolist() == [2 + 4 * row + col for row, col in rows_cols]


def test_a_square_image_maps_each_grid_cell_to_its_token():
    stack = tiny_stack(row_separators=True)
    centres = [(8 * col + 4, 8 * row + 4) for row in range(4) for col in range(4)]
    tokens = stack.grid_tokens_at((32, 32), centres)
    assert tokens.tolist() == [2 + 5 * row + col for row in range(4) for col in range(4)]


def test_points_need_a_grid_and_an_unambiguous_part():
    only_queries = VisualStack(
        "single", ["tiny_blip2_qformer"], "channel_concat", out_dim=16,
        splitter_options={"base_size": 32},
    )  # fmt: skip
    with pytest.raises(ValueError, match="lays out no grid tokens"):
        only_queries.grid_tokens_at((32, 32), [(1, 1)])
    two_grids = VisualStack(
        "single", ["tiny_clip_vit", "tiny_hf_dinov2"], "sequence_concat", out_dim=16,
        splitter_options={"base_size": 32},
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"grid parts \['tiny_clip_vit', 'tiny_hf_dinov2'\]"):
        two_grids.grid_tokens_at((32, 32), [(1, 1)])
    with pytest.raises(ValueError, match="Unknown grid part 'clip'"):
        two_grids.grid_tokens_at((32, 32), [(1, 1)], part="clip")
    index = two_grids.grid_tokens_at((32, 32), [(31, 31)], part="tiny_hf_dinov2")
    assert int(index[0]) == two_grids.num_tokens() - 1
