"""Sparsification of task vectors, per tensor, as the merge methods use it (mergekit 0.1.5's
choices; see tests/llm/oracle/MERGEKIT_SEMANTICS.md, section 4).

- `magnitude` (TIES, arXiv 2306.01708): keep the `max(1, floor(d * n))` entries of largest
  magnitude. The paper ranks over the whole model; per tensor is mergekit's and ours.
- `magnitude_outliers` (Model Breadcrumbs, arXiv 2312.06795): drop the largest `floor(gamma * n)`
  entries and the smallest, keeping `floor(d * n)`.
- `ranking`: "sort" ranks by a full sort as mergekit does (its tie-breaking at the cut is torch's
  unstable sort: required to reproduce mergekit exactly, and O(n log n)); "select" finds the cut
  by selection in O(n) (`rank_cut`: a radix select over the magnitudes' bit patterns, which
  also works block by block), equal magnitudes ranked by position.
- `random` (DARE, arXiv 2311.03099): keep each entry with probability `d`.
- `rescale`: scale the survivors so the L1 norm is kept (mergekit, for any sparsifier), or by
  `1 / d` (DARE's paper).
"""

from __future__ import annotations

import torch

from sphinx_mllm.llm.merging.methods.rank_cut import find_rank_cut, magnitude_keys

RANKINGS = ("sort", "select")
RESCALINGS = ("l1", "inverse_density")


def magnitude(delta: torch.Tensor, density: float, ranking: str = "sort") -> torch.Tensor:
    """Keep the `max(1, floor(density * n))` entries of largest magnitude."""
    if density >= 1:
        return delta
    low, high = magnitude_ranks(delta.numel(), density)
    if low == high:
        return torch.zeros_like(delta)
    if _ranking(ranking) == "select":
        return delta * _rank_range_mask(delta, low, high).to(delta.dtype)
    order = torch.argsort(delta.abs().reshape(-1).float(), descending=True)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[order[: high - low]] = 1
    return delta * mask.reshape_as(delta)


def magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float, ranking: str = "sort"
) -> torch.Tensor:
    """Keep the entries ranked `[bottom, bottom + keep)` by increasing magnitude."""
    if density >= 1:
        return delta
    low, high = outlier_ranks(delta.numel(), density, gamma)
    if _ranking(ranking) == "select":
        return delta * _rank_range_mask(delta, low, high).to(delta.dtype)
    order = torch.sort(delta.abs().reshape(-1).float()).indices
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[order[low:high]] = 1
    return delta * mask.reshape_as(delta)


def magnitude_ranks(count: int, density: float) -> tuple[int, int]:
    """The increasing-magnitude ranks `magnitude` keeps (density < 1): the top
    `max(1, floor(density * count))`, none for density <= 0."""
    if density <= 0 or count == 0:
        return count, count
    return count - max(1, int(density * count)), count


def outlier_ranks(count: int, density: float, gamma: float) -> tuple[int, int]:
    """The increasing-magnitude ranks `magnitude_outliers` keeps (density < 1)."""
    keep, top = int(density * count), int(gamma * count)
    bottom = max(0, count - keep - top)
    return bottom, bottom + keep


def _ranking(ranking: str) -> str:
    if ranking not in RANKINGS:
        raise ValueError(f"Unknown ranking {ranking!r}; expected one of {RANKINGS}")
    return ranking


def _rank_range_mask(delta: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """True where an entry's magnitude ranks in [low, high) in increasing order, found by
    selection (`rank_cut`), not sorting; among equal magnitudes the earlier position ranks
    lower (a stable order)."""
    keys = magnitude_keys(delta)
    cut = find_rank_cut(lambda: [keys], keys.numel(), low, high, delta.element_size())
    return cut.mask(keys).reshape(delta.shape)


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
