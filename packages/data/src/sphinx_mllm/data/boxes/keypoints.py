"""COCO person keypoints as named, normalised points ready for the text codec.

SPHINX's pose task writes each labelled keypoint as ``<p>left shoulder</p> [0.41,0.30]``, in
COCO order, with the COCO names' underscores written as spaces.
"""

from __future__ import annotations

from collections.abc import Sequence

from sphinx_mllm.data.boxes.geometry import Frame, Point, normalize_point

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left eye",
    "right eye",
    "left ear",
    "right ear",
    "left shoulder",
    "right shoulder",
    "left elbow",
    "right elbow",
    "left wrist",
    "right wrist",
    "left hip",
    "right hip",
    "left knee",
    "right knee",
    "left ankle",
    "right ankle",
)


def coco_keypoints(
    keypoints: Sequence[float], image_size: Sequence[int], frame: Frame = "padded"
) -> list[tuple[str, Point]]:
    """Labelled keypoints of a COCO ``[x1, y1, v1, ..., x17, y17, v17]`` list, normalised.

    A keypoint is labelled when its visibility ``v`` is 1 (occluded) or 2 (visible); ``v = 0``
    ones are left out.
    """
    expected = 3 * len(COCO_KEYPOINT_NAMES)
    if len(keypoints) != expected:
        raise ValueError(f"COCO keypoints need {expected} numbers; got {len(keypoints)}")
    named = []
    for index, name in enumerate(COCO_KEYPOINT_NAMES):
        x, y, visibility = keypoints[3 * index : 3 * index + 3]
        if visibility > 0:
            named.append((name, normalize_point((x, y), image_size, frame)))
    return named
