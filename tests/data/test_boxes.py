"""The box and point text codec: exact formats per style, round trips, tolerance, robustness."""

import contextlib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_mllm.data.boxes import (
    COCO_KEYPOINT_NAMES,
    FRAMES,
    STYLES,
    BoxParseError,
    GroundedBoxes,
    GroundedPoints,
    box_iou,
    coco_keypoints,
    denormalize_box,
    format_box,
    format_boxes,
    format_grounded_text,
    format_keypoints,
    format_phrase,
    format_point,
    get_box_style,
    normalize_box,
    parse_boxes,
    parse_first_bracket,
    parse_points,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

# RefCOCO val worked example of the recipe ("Boxes and points as text").
IMAGE_SIZE = (640, 428)
GT_XYXY = (468.3, 0.91, 640.0, 117.03)

BOX = (0.1, 0.2, 0.3, 0.4)
EXPECTED_ONE_BOX = {
    "sphinx": "[0.10,0.20,0.30,0.40]",
    "llava": "[0.1, 0.2, 0.3, 0.4]",
    "shikra": "[0.100,0.200,0.300,0.400]",
    "qwen_vl": "<box>(100,200),(300,400)</box>",
    "minigpt_v2": "{<10><20><30><40>}",
}
EXPECTED_PHRASE_TWO_BOXES = {
    "sphinx": "<p>person</p> [0.10,0.20,0.30,0.40;0.55,0.21,0.70,0.90]",
    "llava": "<p>person</p> [0.1, 0.2, 0.3, 0.4; 0.55, 0.21, 0.7, 0.9]",
    "shikra": "person[0.100,0.200,0.300,0.400;0.550,0.210,0.700,0.900]",
    "qwen_vl": "<ref>person</ref><box>(100,200),(300,400)</box><box>(550,210),(700,900)</box>",
    "minigpt_v2": "<p>person</p> {<10><20><30><40>}<delim>{<55><21><70><90>}",
}


@pytest.mark.parametrize("style", list(STYLES))
def test_each_style_writes_its_published_format(style):
    assert format_box(BOX, style) == EXPECTED_ONE_BOX[style]
    two = [BOX, (0.55, 0.21, 0.7, 0.9)]
    assert format_phrase("person", two, style) == EXPECTED_PHRASE_TWO_BOXES[style]


@pytest.mark.parametrize("style", list(STYLES))
def test_each_style_reads_its_published_format_back(style):
    [record] = parse_boxes(EXPECTED_PHRASE_TWO_BOXES[style], style)
    assert record.boxes == (BOX, (0.55, 0.21, 0.7, 0.9))
    assert record.phrase == (None if style == "shikra" else "person")


def test_worked_example_normalises_into_the_padded_square():
    padded = normalize_box(GT_XYXY, IMAGE_SIZE)
    assert padded == pytest.approx((0.7317, 0.1670, 1.0, 0.3485), abs=5e-5)
    assert format_box(padded) == "[0.73,0.17,1.00,0.35]"
    assert box_iou((0.73, 0.17, 1.00, 0.35), padded) == pytest.approx(0.9695, abs=5e-5)


def test_worked_example_per_axis_encoding_misses():
    per_axis = normalize_box(GT_XYXY, IMAGE_SIZE, frame="per_axis")
    assert format_box(per_axis) == "[0.73,0.00,1.00,0.27]"
    padded = normalize_box(GT_XYXY, IMAGE_SIZE)
    assert box_iou((0.73, 0.00, 1.00, 0.27), padded) == pytest.approx(0.294, abs=5e-4)


def test_padded_frame_shifts_the_short_axis_by_floor_half_the_difference():
    # Portrait 427x640 (RefCOCO train image 581857): x is shifted by (640 - 427) // 2 = 106.
    box = xywh_to_xyxy((103.93, 299.99, 134.22, 177.42))
    x1, y1, x2, y2 = normalize_box(box, (427, 640))
    assert (x1, y1) == pytest.approx(((103.93 + 106) / 640, 299.99 / 640))
    assert (x2, y2) == pytest.approx(((103.93 + 134.22 + 106) / 640, (299.99 + 177.42) / 640))
    assert denormalize_box((x1, y1, x2, y2), (427, 640)) == pytest.approx(box)
    assert xyxy_to_xywh(box) == pytest.approx((103.93, 299.99, 134.22, 177.42))


def test_normalisation_clamps_to_the_unit_square():
    assert normalize_box((-5, -5, 700, 500), IMAGE_SIZE, "per_axis") == (0.0, 0.0, 1.0, 1.0)


def test_writing_pixels_instead_of_normalised_values_is_an_error_naming_the_value():
    with pytest.raises(ValueError, match=r"468\.3"):
        format_box(GT_XYXY)


def test_an_unknown_style_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean sphinx"):
        get_box_style("sphynx")


def test_qwen_writes_one_as_its_top_level_999():
    assert format_box((0.0, 0.0, 1.0, 1.0), "qwen_vl") == "<box>(0,0),(999,999)</box>"


@st.composite
def pixel_boxes(draw, size):
    width, height = size
    xs = sorted(draw(st.floats(0, width)) for _ in range(2))
    ys = sorted(draw(st.floats(0, height)) for _ in range(2))
    return (xs[0], ys[0], xs[1], ys[1])


@st.composite
def images_with_boxes(draw):
    size = (draw(st.integers(1, 5000)), draw(st.integers(1, 5000)))
    boxes = draw(st.lists(pixel_boxes(size), min_size=1, max_size=4))
    return size, boxes


phrases = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,'-", min_size=1, max_size=30).filter(
    lambda s: s.strip() == s and s
)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("style", list(STYLES))
@settings(max_examples=150, deadline=None)
@given(image=images_with_boxes(), phrase=phrases)
def test_formatting_then_parsing_returns_every_box_within_half_a_quantum(
    style, frame, image, phrase
):
    size, boxes = image
    spec = get_box_style(style)
    normalised = [normalize_box(box, size, frame) for box in boxes]
    text = f"Sure. {format_phrase(phrase, normalised, style)} is here."
    [record] = parse_boxes(text, style)
    assert record.phrase == (None if style == "shikra" else phrase)
    assert len(record.boxes) == len(normalised)
    for parsed, truth in zip(record.boxes, normalised, strict=True):
        for got, want in zip(parsed, truth, strict=True):
            assert abs(got - min(want, spec.max_value)) <= spec.quantum / 2 + 1e-9
    # Back in pixels, the error stays below half a quantum of the frame's scale.
    side = max(size)
    for parsed, box in zip(record.boxes, boxes, strict=True):
        scale = (side, side, side, side) if frame == "padded" else (*size, *size)
        back = denormalize_box(parsed, size, frame)
        for got, want, s in zip(back, box, scale, strict=True):
            assert abs(got - want) <= s * spec.quantum + 1e-6


@pytest.mark.parametrize("style", list(STYLES))
@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_any_unicode_text_raises_nothing_but_box_parse_error(style, text):
    parse_boxes(text, style)
    parse_points(text, style)
    with contextlib.suppress(BoxParseError):
        parse_first_bracket(text, style)


box_like_text = st.text(alphabet="[]{}()<>/;,. -0123456789pdelimrfbox\n", max_size=80)


@pytest.mark.parametrize("style", list(STYLES))
@settings(max_examples=300, deadline=None)
@given(text=box_like_text)
def test_box_like_junk_raises_nothing_but_box_parse_error(style, text):
    for record in parse_boxes(text, style):
        assert all(len(box) == 4 for box in record.boxes)
    parse_points(text, style)
    with contextlib.suppress(BoxParseError):
        parse_first_bracket(text, style)


@pytest.mark.parametrize(
    "text", ["", "no box here", "[citation needed]", "items [1, 2, 3]", "[0.1,0.2,0.3,0.4,0.5]"]
)
def test_text_without_a_box_gives_an_empty_result(text):
    assert parse_boxes(text) == []


def test_parser_tolerates_spaces_decimals_and_integers():
    text = "[0.1, 0.2 ,0.333, 1] then [ 0.25,0.5,0.75,1.0 ]"
    assert [r.boxes for r in parse_boxes(text)] == [
        ((0.1, 0.2, 0.333, 1.0),),
        ((0.25, 0.5, 0.75, 1.0),),
    ]


def test_several_grounded_phrases_in_one_text_keep_their_order_and_spans():
    man, horse = (0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 0.95)
    text = format_grounded_text(
        ["A ", GroundedBoxes("man", (man,)), " rides a ", GroundedBoxes("horse", (horse,)), "."]
    )
    assert text == "A <p>man</p> [0.10,0.20,0.30,0.40] rides a <p>horse</p> [0.50,0.50,0.90,0.95]."
    records = parse_boxes(text)
    assert records == [GroundedBoxes("man", (man,)), GroundedBoxes("horse", (horse,))]
    assert text[slice(*records[0].span)] == "<p>man</p> [0.10,0.20,0.30,0.40]"


def test_a_bracket_without_a_phrase_has_phrase_none():
    assert parse_boxes("It is at [0.10,0.20,0.30,0.40].") == [GroundedBoxes(None, (BOX,))]


def test_first_bracket_returns_all_its_numbers_flat():
    text = "Answer: [0.10,0.20,0.30,0.40;0.55,0.21,0.70,0.90] and [0.1,0.1,0.2,0.2]"
    assert parse_first_bracket(text) == (0.1, 0.2, 0.3, 0.4, 0.55, 0.21, 0.7, 0.9)
    assert parse_first_bracket("no bracket") is None
    assert parse_first_bracket("<box>(100,200),(300,400)</box>", "qwen_vl") == BOX


def test_first_bracket_on_pathological_text():
    """Text made of 200,000 `[` (a regular expression searched from each of them took quadratic
    time): the scan is linear, and the answers are those of the first bracket."""
    many = "[" * 200_000
    assert parse_first_bracket(many) is None  # no closing bracket at all
    with pytest.raises(BoxParseError, match=r"at character 0 holds '\[\[\["):
        parse_first_bracket(many + "]")
    assert parse_first_bracket("x" * 200_000 + "[0.1,0.2,0.3,0.4]") == (0.1, 0.2, 0.3, 0.4)
    assert parse_first_bracket("<box>" * 50_000, "qwen_vl") is None


def test_first_bracket_holding_words_is_a_box_parse_error():
    with pytest.raises(BoxParseError, match="the man"):
        parse_first_bracket("[the man] [0.1,0.2,0.3,0.4]")
    assert issubclass(BoxParseError, ValueError)


def test_points_round_trip_with_their_phrases():
    assert format_point((0.41, 0.3)) == "[0.41,0.30]"
    text = "[0.41,0.30;0.5,0.5] and [0.1,0.2,0.3,0.4]"
    assert parse_points(text) == [GroundedPoints(None, ((0.41, 0.3), (0.5, 0.5)))]


def test_coco_keypoints_keep_labelled_ones_in_coco_order():
    keypoints = [0.0] * 51
    keypoints[0:3] = [320, 100, 2]  # nose, visible
    keypoints[15:18] = [262.4, 21.4, 1]  # left shoulder, occluded but labelled
    keypoints[18:21] = [50, 50, 0]  # right shoulder, not labelled
    named = coco_keypoints(keypoints, IMAGE_SIZE)
    assert [name for name, _ in named] == ["nose", "left shoulder"]
    text = format_keypoints(named)
    assert text == "<p>nose</p> [0.50,0.32] <p>left shoulder</p> [0.41,0.20]"
    assert [(p.phrase, p.points) for p in parse_points(text)] == [
        ("nose", ((0.5, 0.32),)),
        ("left shoulder", ((0.41, 0.2),)),
    ]
    assert len(COCO_KEYPOINT_NAMES) == 17
    assert all("_" not in name for name in COCO_KEYPOINT_NAMES)


def test_coco_keypoints_of_the_wrong_length_name_it():
    with pytest.raises(ValueError, match="51 numbers; got 50"):
        coco_keypoints([0.0] * 50, IMAGE_SIZE)


def test_empty_groups_and_markers_inside_phrases_are_errors():
    with pytest.raises(ValueError, match="at least one"):
        format_boxes([])
    with pytest.raises(ValueError, match="</p>"):
        format_phrase("a </p> b", [BOX])


def test_importing_the_codec_and_metrics_does_not_import_torch():
    code = (
        "import sys, sphinx_mllm.data.boxes, sphinx_mllm.data.metrics; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
