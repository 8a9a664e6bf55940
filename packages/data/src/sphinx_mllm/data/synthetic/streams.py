"""Where each synthetic item's randomness and ids come from. Every item has its own random
stream, keyed by (seed, split, kind, index, attempt), so an item never depends on how many
others were made, and train and val never share a stream. Image ids encode split, kind and
index (train shape scene 0 is 110000001), so they are stable, unique, and disjoint by split."""

from __future__ import annotations

import numpy as np

SPLITS = {"train": 1, "val": 2}
KINDS = {"shapes": 1, "figures": 2, "pages": 3}
MAX_ITEMS = 10**7 - 1  # per split and kind, so the index fits its digits of the image id
MAX_PER_IMAGE = 99  # annotations of one image, so annotation ids stay unique


def _codes(split: str, kind: str) -> tuple[int, int]:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLITS)}")
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; expected one of {list(KINDS)}")
    return SPLITS[split], KINDS[kind]


def item_rng(seed: int, split: str, kind: str, index: int, attempt: int = 0) -> np.random.Generator:
    """The random stream of one item (a later `attempt` when an earlier one was a duplicate)."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng([seed, *_codes(split, kind), index, attempt])


def image_id(split: str, kind: str, index: int) -> int:
    if not 0 <= index < MAX_ITEMS:
        raise ValueError(f"Item index {index} outside 0..{MAX_ITEMS - 1}")
    split_code, kind_code = _codes(split, kind)
    return split_code * 10**8 + kind_code * 10**7 + index + 1


def annotation_id(image: int, position: int) -> int:
    """Id of the `position`-th annotation (from 0) of an image, unique across the dataset."""
    if not 0 <= position < MAX_PER_IMAGE:
        raise ValueError(f"Image {image} has more than {MAX_PER_IMAGE} annotations")
    return image * 100 + position + 1


def question_id(image: int, position: int) -> int:
    """VQAv2's scheme: image id times 1000 plus the question's position."""
    return image * 1000 + position
