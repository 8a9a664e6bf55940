"""Views: padding where the box codec expects it, exact reassembly of tiles, anyres grid choice,
layout inversion and drawing."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from sphinx_mllm.encoders import OPENAI_CLIP_MEAN
from sphinx_mllm.encoders.transforms import pil_to_tensor
from sphinx_mllm.mixer import get_view_splitter, padded_resize
from sphinx_mllm.mixer.anyres import select_best_resolution
from sphinx_mllm.mixer.views import OPENAI_CLIP_FILL, fill_colour, pad_box


def test_fill_is_the_truncated_clip_mean():
    assert fill_colour(OPENAI_CLIP_MEAN) == OPENAI_CLIP_FILL == (122, 116, 104)


@pytest.mark.parametrize(
    ("size", "offsets"), [((640, 428), (0, 106)), ((427, 640), (106, 0)), ((300, 300), (0, 0))]
)
def test_padding_offset_is_half_the_difference_on_the_short_axis(size, offsets):
    width, height = size
    side = max(size)
    assert pad_box(width, height, 1.0) == (side, side, (side - width) // 2, (side - height) // 2)
    assert pad_box(width, height, 1.0)[2:] == offsets


def test_padded_resize_places_the_image_where_the_box_codec_expects():
    image = Image.new("RGB", (640, 428), (255, 255, 255))
    square = padded_resize(image, 640)  # no resize: the padding itself
    pixels = pil_to_tensor(square)
    assert square.size == (640, 640)
    column = pixels[0, :, 320]
    content = (column == 1.0).nonzero().flatten()
    assert (content.min().item(), content.max().item()) == (106, 106 + 428 - 1)
    assert pixels[:, 0, 0].tolist() == pytest.approx([v / 255 for v in OPENAI_CLIP_FILL])


def test_a_448_image_splits_into_global_then_tiles_that_reassemble_exactly():
    image = Image.fromarray(data.astronaut())
    splitter = get_view_splitter("global_grid")(base_size=224, grid=2)
    views, layout = splitter.split(image)
    canvas = pil_to_tensor(padded_resize(image, 448))
    assert views.shape == (5, 3, 224, 224)
    assert [(v.kind, v.row, v.col) for v in layout.views] == [
        ("global", None, None),
        ("tile", 0, 0),
        ("tile", 0, 1),
        ("tile", 1, 0),
        ("tile", 1, 1),
    ]
    top = torch.cat([views[1], views[2]], dim=2)
    bottom = torch.cat([views[3], views[4]], dim=2)
    assert torch.equal(torch.cat([top, bottom], dim=1), canvas)
    assert torch.equal(views[0], F.interpolate(canvas[None], size=(224, 224), mode="bicubic")[0])


def test_a_672_image_gives_ten_views_in_raster_order():
    splitter = get_view_splitter("global_grid")(base_size=224, grid=3)
    layout = splitter.layout((1000, 700))
    assert layout.num_views == 10
    assert [v.box[:2] for v in layout.views[1:4]] == [(0.0, 0.0), (224.0, 0.0), (448.0, 0.0)]


@pytest.mark.parametrize(
    ("image_size", "expected"),
    [
        ((1000, 500), (672, 336)),  # wide: 1 row x 2 columns
        ((500, 1000), (336, 672)),  # tall: 2 rows x 1 column
        ((900, 900), (672, 672)),  # square and large: 2 x 2
        ((1500, 400), (1008, 336)),  # very wide: 1 x 3
        ((400, 1500), (336, 1008)),  # very tall: 3 x 1
        (
            (200, 100),
            (336, 672),
        ),  # smaller than every candidate: the first of the smallest canvases
    ],
)
def test_anyres_picks_llava_next_grids(image_size, expected):
    splitter = get_view_splitter("anyres")(base_size=336)
    assert splitter.canvas_size(image_size) == expected
    rows, cols = expected[1] // 336, expected[0] // 336
    assert splitter.num_views(image_size) == 1 + rows * cols


def test_select_best_resolution_prefers_effective_resolution_then_less_waste():
    # 600x300 fits (672, 336) at full resolution; (672, 672) keeps as much but wastes more
    assert select_best_resolution((600, 300), [(672, 672), (672, 336)]) == (672, 336)


def test_anyres_views_and_global_square():
    image = Image.fromarray(data.coffee())  # 600 x 400
    splitter = get_view_splitter("anyres")(base_size=64, grids=[(1, 2), (2, 1)])
    views, layout = splitter.split(image)
    assert layout.canvas_size == (128, 64)
    assert views.shape == (3, 3, 64, 64)
    assert torch.equal(views[0], pil_to_tensor(padded_resize(image, 64)))
    assert layout.views[0].box == (0.0, -32.0, 128.0, 96.0)


def test_layout_maps_boxes_between_canvas_and_image():
    splitter = get_view_splitter("global_grid")(base_size=224, grid=2)
    layout = splitter.layout((640, 428))
    assert layout.content_box == pytest.approx(
        (0.0, 106 * 448 / 640, 448.0, (106 + 428) * 448 / 640)
    )
    top_left = layout.canvas_to_image(layout.views[1].box)
    assert top_left == pytest.approx((0.0, -106.0, 320.0, 214.0))
    box = (10.0, 20.0, 300.0, 400.0)
    assert layout.canvas_to_image(layout.image_to_canvas(box)) == pytest.approx(box)


def test_layout_draws_tile_outlines_on_the_original_image():
    image = Image.new("RGB", (400, 400), (0, 0, 0))
    layout = get_view_splitter("global_grid")(base_size=100, grid=2).layout(image.size)
    drawn = pil_to_tensor(layout.draw(image, width=1))
    assert (
        drawn[0, 0, :].eq(1.0).all() and drawn[0, 199, :].eq(1.0).all()
    )  # tile top and bottom edges
    assert drawn[0, 100, 100] == 0.0  # inside a tile stays black


def test_splitting_refuses_non_images_and_wrong_canvases():
    splitter = get_view_splitter("global_grid")(base_size=224, grid=2)
    with pytest.raises(TypeError, match="splits a PIL image, got Tensor"):
        splitter.split(torch.zeros(3, 448, 448))
    layout = splitter.layout((448, 448))
    with pytest.raises(ValueError, match="the canvas is 300x300 but its views need 448x448"):
        splitter.split_canvas(torch.zeros(3, 300, 300), layout)


@pytest.mark.parametrize(
    ("factory", "options", "message"),
    [
        ("single", {"base_size": 0}, "base_size must be a positive int"),
        ("global_grid", {"grid": 1}, "grid must be an int >= 2"),
        ("anyres", {"grids": [(0, 2)]}, "grids must be"),
    ],
)
def test_bad_splitter_options_are_refused(factory, options, message):
    with pytest.raises(ValueError, match=message):
        get_view_splitter(factory)(**options)
