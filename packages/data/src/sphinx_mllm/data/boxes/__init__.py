"""The box and point text codec: pixel geometry, named text styles, formatting and parsing.

```python
from sphinx_mllm.data.boxes import format_phrase, normalize_box, parse_boxes

box = normalize_box([468.3, 0.91, 640.0, 117.03], (640, 428))  # padded-square frame
text = format_phrase("the man", [box])      # '<p>the man</p> [0.73,0.17,1.00,0.35]'
parse_boxes(text)[0].boxes                   # ((0.73, 0.17, 1.0, 0.35),)
```
"""

from sphinx_mllm.data.boxes.format import (
    format_box,
    format_boxes,
    format_grounded_text,
    format_keypoints,
    format_phrase,
    format_phrase_points,
    format_point,
    format_points,
)
from sphinx_mllm.data.boxes.geometry import (
    FRAMES,
    Box,
    Frame,
    Point,
    box_area,
    box_iou,
    denormalize_box,
    denormalize_point,
    frame_transform,
    normalize_box,
    normalize_point,
    to_padded_pixels,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from sphinx_mllm.data.boxes.keypoints import COCO_KEYPOINT_NAMES, coco_keypoints
from sphinx_mllm.data.boxes.parse import (
    BoxParseError,
    parse_boxes,
    parse_first_bracket,
    parse_points,
)
from sphinx_mllm.data.boxes.records import GroundedBoxes, GroundedPoints
from sphinx_mllm.data.boxes.styles import STYLES, BoxStyle, StyleLike, get_box_style

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "FRAMES",
    "STYLES",
    "Box",
    "BoxParseError",
    "BoxStyle",
    "Frame",
    "GroundedBoxes",
    "GroundedPoints",
    "Point",
    "StyleLike",
    "box_area",
    "box_iou",
    "coco_keypoints",
    "denormalize_box",
    "denormalize_point",
    "format_box",
    "format_boxes",
    "format_grounded_text",
    "format_keypoints",
    "format_phrase",
    "format_phrase_points",
    "format_point",
    "format_points",
    "frame_transform",
    "get_box_style",
    "normalize_box",
    "normalize_point",
    "parse_boxes",
    "parse_first_bracket",
    "parse_points",
    "to_padded_pixels",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]
