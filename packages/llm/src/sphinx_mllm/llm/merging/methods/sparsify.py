"""Sparsification of task vectors, per tensor, as the merge methods use it (mergekit 0.1.5's
choices; see tests/llm/oracle/MERGEKIT_SEMANTICS.md, section 4).

- `magnitude` (TIES, arXiv 2306.01708): keep the `max(1, floor(d * n))` entries of largest
  magnitude. The paper ranks over the whole model; per tensor is mergekit's and ours.
- `magnitude_outliers` (Model Breadcrumbs, arXiv 2312.06795): drop the largest `floor(gamma * n)`
  entries and the smallest, keeping `floor(d * n)`.
- `random` (DARE, arXiv 2311.03099): keep each entry with probability `d`.
- `rescale`: scale the survivors so the L1 norm is kept (mergekit, for any sparsifier), or by
  `1 / d` (DARE's paper).
"""

from __future__ import annotations

import torch


def magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    keep = max(1, int(density * delta.numel()))
    order = torch.argsort(delta.abs().reshape(-1).float(), descending=True)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[order[:keep]] = 1
    return delta * mask.reshape_as(delta)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    if density >= 1:
        return delta
    count = delta.numel()
    keep, top = int(density * count), int(gamma * count)
    bottom = max(0, count - keep - top)
    order = torch.sort(delta.abs().reshape(-1).float()).indices
    mask = torch.zeros(count, dtype=delta.dtype)
    mask[order[bottom : bottom + keep]] = 1
    return delta * mask.reshape_as(delta)


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
