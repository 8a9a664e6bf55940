"""Finiteness checks on the blocks a merge already holds in memory, so that NaN or infinite
values never reach an output silently.

Each output block costs one reduction (its minimum and maximum: a NaN makes both NaN, an
infinity shows in one), no extra pass over the files. A non-finite input makes the merged block
non-finite too (the methods mask and weigh by multiplying, and NaN * 0 is NaN), so only when a
block fails are its inputs read again, to name the tensor, model and file at fault.
"""

from __future__ import annotations

import torch

CHUNK = 1 << 20  # elements reduced at once (16-bit ones widened to float32 a chunk at a time)


class NonFiniteError(ValueError):
    """A merge input or result holding NaN or infinite values; the message names the tensor and
    the model or file it comes from."""


def all_finite(values: torch.Tensor, rounded_to: torch.dtype | None = None) -> bool:
    """Whether every value is finite and, with `rounded_to`, stays finite when rounded to that
    dtype (rounding is monotonic, so the extremes decide)."""
    if not values.is_floating_point() or values.numel() == 0:
        return True
    flat = values.reshape(-1)
    extremes = []
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start : start + CHUNK]
        if chunk.element_size() < 4:
            chunk = chunk.float()  # exact; torch's 16-bit min/max reductions are many times slower
        extremes.extend(torch.aminmax(chunk))
    stacked = torch.stack(extremes)
    if rounded_to is not None:
        stacked = stacked.to(rounded_to)
    return bool(torch.isfinite(stacked).all())
