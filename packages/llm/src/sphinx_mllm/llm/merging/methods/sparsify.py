"""Sparsification of task vectors, per tensor, as the merge methods use it (mergekit 0.1.5's
choices; see tests/llm/oracle/MERGEKIT_SEMANTICS.md, section 4).

- `magnitude` (TIES, arXiv 2306.01708): keep the `max(1, floor(d * n))` entries of largest
  magnitude. The paper ranks over the whole model; per tensor is mergekit's and ours.
- `magnitude_outliers` (Model Breadcrumbs, arXiv 2312.06795): drop the largest `floor(gamma * n)`
  entries and the smallest, keeping `floor(d * n)`.
- `ranking`: "sort" ranks by a full sort as mergekit does (its tie-breaking at the cut is torch's
  unstable sort: required to reproduce mergekit exactly, and O(n log n)); "select" finds the cut
  by selection in O(n) (a histogram for 16-bit tensors), equal magnitudes ranked by position.
- `random` (DARE, arXiv 2311.03099): keep each entry with probability `d`.
- `rescale`: scale the survivors so the L1 norm is kept (mergekit, for any sparsifier), or by
  `1 / d` (DARE's paper).
"""

from __future__ import annotations

import torch

RANKINGS = ("sort", "select")


def magnitude(delta: torch.Tensor, density: float, ranking: str = "sort") -> torch.Tensor:
    """Keep the `max(1, floor(density * n))` entries of largest magnitude."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    count = delta.numel()
    keep = max(1, int(density * count))
    if _ranking(ranking) == "select":
        return delta * _rank_range_mask(delta, count - keep, count).to(delta.dtype)
    order = torch.argsort(delta.abs().reshape(-1).float(), descending=True)
    mask = torch.zeros(count, dtype=delta.dtype)
    mask[order[:keep]] = 1
    return delta * mask.reshape_as(delta)


def magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float, ranking: str = "sort"
) -> torch.Tensor:
    """Keep the entries ranked `[bottom, bottom + keep)` by increasing magnitude."""
    if density >= 1:
        return delta
    count = delta.numel()
    keep, top = int(density * count), int(gamma * count)
    bottom = max(0, count - keep - top)
    if _ranking(ranking) == "select":
        return delta * _rank_range_mask(delta, bottom, bottom + keep).to(delta.dtype)
    order = torch.sort(delta.abs().reshape(-1).float()).indices
    mask = torch.zeros(count, dtype=delta.dtype)
    mask[order[bottom : bottom + keep]] = 1
    return delta * mask.reshape_as(delta)


def _ranking(ranking: str) -> str:
    if ranking not in RANKINGS:
        raise ValueError(f"Unknown ranking {ranking!r}; expected one of {RANKINGS}")
    return ranking


def _rank_range_mask(delta: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """True where an entry's magnitude ranks in [low, high) in increasing order, found by
    selection, not sorting; among equal magnitudes the earlier position ranks lower (a stable
    order). 16-bit magnitudes are ranked by a histogram of their bit patterns (which order like
    the values); wider ones through `kthvalue`."""
    if high <= low:
        return torch.zeros_like(delta, dtype=torch.bool)
    if delta.element_size() == 2:
        keys = delta.abs().reshape(-1).view(torch.int16)  # non-negative: patterns order as values
        cumulative = torch.bincount(keys.to(torch.int32), minlength=1 << 16).cumsum(0)
        lowest = int(torch.searchsorted(cumulative, low + 1))
        highest = int(torch.searchsorted(cumulative, high))
        below_lowest = int(cumulative[lowest - 1]) if lowest else 0
        below_highest = int(cumulative[highest - 1]) if highest else 0
    else:
        keys = delta.abs().reshape(-1).float()
        lowest = float(torch.kthvalue(keys, low + 1).values)
        highest = float(keys.max() if high == keys.numel() else torch.kthvalue(keys, high).values)
        below_lowest, below_highest = int((keys < lowest).sum()), int((keys < highest).sum())
    mask = (keys > lowest) & (keys < highest)
    at_lowest = (keys == lowest).nonzero().flatten()  # their ranks: below_lowest, +1, ...
    mask[at_lowest[max(0, low - below_lowest) : high - below_lowest]] = True
    if highest != lowest:
        at_highest = (keys == highest).nonzero().flatten()
        mask[at_highest[: high - below_highest]] = True
    return mask.reshape(delta.shape)


def random_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE's drop: each entry kept with probability `density` (drawn in bf16 for bf16 deltas,
    else float32, as mergekit draws them)."""
    if density >= 1:
        return delta
    work = delta.dtype if delta.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work), generator=generator)
    return delta.to(work) * mask


def rescale(
    original: torch.Tensor, kept: torch.Tensor, density: float, by: str = "l1"
) -> torch.Tensor:
    """Scale the kept entries back up: "l1" keeps the tensor's L1 norm (mergekit), skipped when
    either norm is below 1e-7; "inverse_density" divides by `density` (DARE's paper)."""
    if density >= 1:
        return kept.to(original.dtype)
    if by == "inverse_density":
        return (kept / density).to(original.dtype)
    if by != "l1":
        raise ValueError(f"Unknown rescale_by {by!r}; expected 'l1' or 'inverse_density'")
    before, after = original.to(kept.dtype).abs().sum(), kept.abs().sum()
    if not (before < 1e-7 or after < 1e-7):
        kept = kept * (before / after)
    return kept.to(original.dtype)
