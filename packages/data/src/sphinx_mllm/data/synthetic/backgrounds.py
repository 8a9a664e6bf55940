"""Backgrounds for synthetic scenes: a plain muted colour, a linear gradient between two, or a
gradient with light noise; always inside `BACKGROUND_RANGE` so no pixel matches a named colour."""

from __future__ import annotations

import numpy as np

from sphinx_mllm.data.synthetic.colours import BACKGROUND_RANGE

BACKGROUND_KINDS = ("plain", "gradient", "noise")
_BASE_RANGE = (100, 195)  # leaves room for the noise inside BACKGROUND_RANGE
_NOISE = 10


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(_BASE_RANGE[0], _BASE_RANGE[1] + 1, size=3).astype(np.float32)


def paint_background(
    rng: np.random.Generator, width: int, height: int, kind: str | None = None
) -> tuple[np.ndarray, str]:
    """An `(height, width, 3)` uint8 background and its kind (drawn at random when None)."""
    if kind is None:
        kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"Unknown background kind {kind!r}; expected one of {BACKGROUND_KINDS}")
    start = _muted_colour(rng)
    if kind == "plain":
        image = np.broadcast_to(start, (height, width, 3)).copy()
    else:
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
        image = start + t[..., None] * (_muted_colour(rng) - start)
    if kind == "noise":
        image = image + rng.integers(-_NOISE, _NOISE + 1, size=image.shape)
    return np.clip(np.rint(image), *BACKGROUND_RANGE).astype(np.uint8), kind
