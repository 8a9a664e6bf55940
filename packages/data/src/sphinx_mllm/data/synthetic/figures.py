"""Stick figures for pose estimation: a person drawn with lines and a round head whose 17 COCO
keypoints are known exactly. Poses (arm and leg angles, lean, head turn), scale and position
vary; a figure may run off the image (those keypoints are unlabelled, v=0) or stand partly
behind a box (keypoints under it are labelled but occluded, v=1). Figures face the viewer, so
the person's left side is on the image's right, as in COCO."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sphinx_mllm.data.synthetic.backgrounds import paint_background
from sphinx_mllm.data.synthetic.colours import COLOUR_NAMES, COLOURS, contrasting
from sphinx_mllm.data.synthetic.masks import Box, tight_box

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
SKELETON: tuple[tuple[int, int], ...] = (  # COCO's, 1-indexed into KEYPOINT_NAMES
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
LIMBS = (("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle"))
MIN_IMAGE_SIZE = 32
MIN_LABELLED = 6  # a figure shows at least this many keypoints inside the image
_HEAD_RADIUS = 0.08  # body proportions, in units of the figure's height
_TRIES = 20


@dataclass(frozen=True, eq=False)
class StickFigure:
    """A drawn person: COCO keypoints (x, y, v) x 17 in pixel coordinates, and the box and
    pixel count of the figure inside the image (including any part behind the occluder)."""

    image: np.ndarray  # (height, width, 3) uint8
    keypoints: tuple[int, ...]
    bbox: Box
    area: int
    colour: str  # of the body; eyes and nose are in `contrasting(colour)`
    background: str

    @property
    def num_keypoints(self) -> int:
        return sum(1 for v in self.keypoints[2::3] if v > 0)


def _direction(angle: float, side: int) -> np.ndarray:
    """A unit vector `angle` radians from straight down, turned away from the body's middle."""
    return np.array([side * math.sin(angle), math.cos(angle)])


def _pose(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joint positions of a random pose, in figure heights, mid-hip at the origin, y down."""
    rad = math.radians
    head = np.array([0.0, -0.45])

    def on_head(dx: float, dy: float) -> np.ndarray:
        return head + _HEAD_RADIUS * np.array([dx, dy])

    turn = rng.uniform(-0.3, 0.3)
    points = {"nose": on_head(turn, 0.15), "neck": np.array([0.0, -0.36])}
    for side, name in ((1, "left"), (-1, "right")):  # the person's left is the image's right
        points[f"{name}_eye"] = on_head(side * 0.38 + turn, -0.18)
        points[f"{name}_ear"] = on_head(side * 0.85, -0.05)
        points[f"{name}_shoulder"] = np.array([side * 0.11, -0.32])
        points[f"{name}_hip"] = np.array([side * 0.07, 0.0])
        upper = rad(rng.uniform(5, 170))
        points[f"{name}_elbow"] = points[f"{name}_shoulder"] + 0.16 * _direction(upper, side)
        fore = upper + rad(rng.uniform(-90, 90))
        points[f"{name}_wrist"] = points[f"{name}_elbow"] + 0.15 * _direction(fore, side)
        thigh = rad(rng.uniform(-5, 40))
        points[f"{name}_knee"] = points[f"{name}_hip"] + 0.23 * _direction(thigh, side)
        shin = thigh + rad(rng.uniform(-35, 25))
        points[f"{name}_ankle"] = points[f"{name}_knee"] + 0.23 * _direction(shin, side)
    points["head"], points["mid_hip"] = head, np.array([0.0, 0.0])
    lean = rad(rng.uniform(-15, 15))
    rotation = np.array([[math.cos(lean), -math.sin(lean)], [math.sin(lean), math.cos(lean)]])
    return {name: rotation @ point for name, point in points.items()}


def _in_image(point: np.ndarray, size: int) -> bool:
    return bool(0 <= point[0] < size and 0 <= point[1] < size)


def _place(rng: np.random.Generator, size: int) -> tuple[dict[str, np.ndarray], float]:
    """A posed figure scaled and moved into pixel coordinates (rounded to whole pixels): wholly
    inside the image most of the time, otherwise anywhere that shows MIN_LABELLED keypoints."""
    for _ in range(_TRIES):
        pose = _pose(rng)
        height = rng.uniform(0.45, 0.95) * size
        margin = (_HEAD_RADIUS + 0.02) * height
        stacked = np.stack(list(pose.values())) * height
        low, high = stacked.min(axis=0) - margin, stacked.max(axis=0) + margin
        if rng.random() < 0.75 and np.all(high - low < size):
            offset = rng.uniform(-low, size - high)
        else:
            offset = rng.uniform(0, size, size=2) - (low + high) / 2
        placed = {name: np.rint(point * height + offset) for name, point in pose.items()}
        if sum(_in_image(placed[name], size) for name in KEYPOINT_NAMES) >= MIN_LABELLED:
            return placed, height
    raise RuntimeError(f"Could not place a stick figure in a {size}px image in {_TRIES} tries")


def _draw_body(
    points: dict[str, np.ndarray], height: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the body (lines, joints, head) and of the face features (eyes, nose)."""
    body = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(body)
    xy = {name: (float(p[0]), float(p[1])) for name, p in points.items()}
    width = max(2, round(0.04 * height))
    segments = [
        ("neck", "mid_hip"),
        ("left_shoulder", "right_shoulder"),
        ("left_hip", "right_hip"),
        ("neck", "head"),
    ]
    for side in ("left", "right"):
        segments += [(f"{side}_{a}", f"{side}_{b}") for a, b in LIMBS]
    for a, b in segments:
        draw.line([xy[a], xy[b]], fill=255, width=width)
    for name in xy:
        x, y = xy[name]
        draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    radius = max(2.0, round(_HEAD_RADIUS * height))
    hx, hy = xy["head"]
    draw.ellipse((hx - radius, hy - radius, hx + radius, hy + radius), fill=255)
    face = Image.new("L", (size, size), 0)
    dot = round(0.15 * radius)
    for name in ("nose", "left_eye", "right_eye"):
        x, y = xy[name]
        ImageDraw.Draw(face).ellipse((x - dot, y - dot, x + dot, y + dot), fill=255)
    return np.asarray(body) > 0, np.asarray(face) > 0


def _occluder(rng: np.random.Generator, bbox: Box, over: np.ndarray) -> Box:
    """A box a quarter to a half the figure's width and height, centred on the point `over`
    and kept inside the figure's box."""
    x, y, w, h = bbox
    ow, oh = (max(2, int(d * rng.uniform(0.25, 0.5))) for d in (w, h))
    ox = min(max(int(over[0]) - ow // 2, x), x + w - ow)
    oy = min(max(int(over[1]) - oh // 2, y), y + h - oh)
    return ox, oy, ow, oh


def _covers(box: Box, point: np.ndarray) -> bool:
    x, y, w, h = box
    return bool(x <= point[0] < x + w and y <= point[1] < y + h)


def make_stick_figure(rng: np.random.Generator, size: int = 96) -> StickFigure:
    """One stick figure on a varied background; a third of them partly behind a box."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"Stick figures need at least {MIN_IMAGE_SIZE} pixels a side, got {size}")
    image, background = paint_background(rng, size, size)
    points, height = _place(rng, size)
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    features = contrasting(COLOURS[colour])
    body, face = _draw_body(points, height, size)
    image[body] = COLOURS[colour]
    image[face] = features
    figure = body | face
    bbox = tight_box(figure)
    visibility = {name: 2 if _in_image(points[name], size) else 0 for name in KEYPOINT_NAMES}
    if rng.random() < 0.35:
        shown = [n for n in KEYPOINT_NAMES if visibility[n]]
        box = _occluder(rng, bbox, points[shown[int(rng.integers(len(shown)))]])
        hidden = [n for n in KEYPOINT_NAMES if visibility[n] and _covers(box, points[n])]
        if sum(v == 2 for v in visibility.values()) - len(hidden) >= 3:
            choices = [c for c in COLOUR_NAMES if COLOURS[c] not in (COLOURS[colour], features)]
            ox, oy, ow, oh = box
            image[oy : oy + oh, ox : ox + ow] = COLOURS[choices[int(rng.integers(len(choices)))]]
            visibility.update(dict.fromkeys(hidden, 1))
    keypoints: list[int] = []
    for name in KEYPOINT_NAMES:
        v = visibility[name]
        keypoints += [int(points[name][0]), int(points[name][1]), v] if v else [0, 0, 0]
    return StickFigure(image, tuple(keypoints), bbox, int(figure.sum()), colour, background)
