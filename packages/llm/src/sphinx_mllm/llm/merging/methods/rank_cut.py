"""Entries ranked by magnitude, found by selection over a tensor read in blocks.

`find_rank_cut` describes the entries whose magnitude ranks in `[low, high)` in increasing
order, equal magnitudes ranked by position (a stable order), without sorting and without holding
the tensor: it reads the blocks a few times.

- Keys: a magnitude's bit pattern as a non-negative integer (`|x|` of a float orders like its
  bits), so selecting a rank is a radix select, 16 bits per pass: a histogram of the top 16
  bits finds the bucket holding the rank, the next pass the next 16 bits within it (one pass
  for 16-bit floats, two for float32, four for float64).
- Ties at the two cut keys: the entries equal to the lower key are kept from a position on, those
  equal to the upper key up to a position; one more pass finds both positions.

A `RankCut` then masks any block from its keys and its offset in the flat tensor, so a tensor
can be sparsified block by block (TIES and Breadcrumbs with `ranking: select`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

KEY_DTYPES = {2: torch.int16, 4: torch.int32, 8: torch.int64}
DIGIT_BITS = 16

KeyBlocks = Callable[[], Iterable[torch.Tensor]]
"""Each call: the flat key blocks of the whole tensor, in order (one pass over it)."""


def magnitude_keys(values: torch.Tensor) -> torch.Tensor:
    """The flat integer keys of `|values|`, ordered as the magnitudes are."""
    return values.abs().reshape(-1).view(KEY_DTYPES[values.element_size()])


@dataclass(frozen=True)
class RankCut:
    """Entries with `low_key < key < high_key`, plus those equal to `low_key` at positions
    `>= low_position` and those equal to `high_key` at positions `< high_position`."""

    low_key: int
    low_position: int
    high_key: int
    high_position: int

    def mask(self, keys: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """True for the selected entries of a block of keys starting at flat `offset`."""
        above = keys > self.low_key
        below = keys < self.high_key
        _admit_tied(above, keys == self.low_key, offset, lambda p: p >= self.low_position)
        _admit_tied(below, keys == self.high_key, offset, lambda p: p < self.high_position)
        return above & below


NOTHING = RankCut(low_key=1, low_position=0, high_key=0, high_position=0)
"""Selects no entry (an empty rank range)."""


def find_rank_cut(blocks: KeyBlocks, numel: int, low: int, high: int, width: int) -> RankCut:
    """The entries ranked `[low, high)` among `numel` keys of `width` bytes (see the module
    docstring)."""
    if not 0 <= low <= high <= numel:
        raise ValueError(f"rank range [{low}, {high}) is not within [0, {numel}]")
    if low == high:
        return NOTHING
    (low_key, below_low, _), (high_key, below_high, at_high) = _select(
        blocks, [low, high - 1], width
    )
    # The keys equal to low_key rank from below_low on: those from the (low - below_low)-th are
    # kept. The keys equal to high_key: those before the (high - below_high)-th are kept.
    low_index, high_index = low - below_low, high - below_high
    searched = {}
    if low_index > 0:
        searched["low"] = (low_key, low_index)
    if high_index < at_high:
        searched["high"] = (high_key, high_index)
    found = _tied_positions(blocks, searched)
    return RankCut(low_key, found.get("low", 0), high_key, found.get("high", numel))


def _select(blocks: KeyBlocks, ranks: list[int], width: int) -> list[tuple[int, int, int]]:
    """For each rank: the key holding it, how many keys are smaller and how many equal (a radix
    select; one pass over the blocks per 16-bit digit, shared by all the ranks)."""
    bits, digits = width * 8, 1 << DIGIT_BITS
    found = [(0, 0) for _ in ranks]  # per rank: the key's high digits so far, smaller keys
    histograms: dict[int, torch.Tensor] = {}
    for shift in range(bits - DIGIT_BITS, -1, -DIGIT_BITS):
        histograms = {prefix: torch.zeros(digits, dtype=torch.int64) for prefix, _ in found}
        for keys in blocks():
            wide = keys.to(torch.int64)
            digit = (wide >> shift) & (digits - 1)
            if shift + DIGIT_BITS == bits:  # the top digit: every key counts
                histograms[0] += torch.bincount(digit, minlength=digits)
                continue
            high = wide >> (shift + DIGIT_BITS)
            for prefix, histogram in histograms.items():
                histogram += torch.bincount(digit[high == prefix], minlength=digits)
        updated = []
        for rank, (prefix, smaller) in zip(ranks, found, strict=True):
            cumulative = histograms[prefix].cumsum(0)
            value = int(torch.searchsorted(cumulative, rank - smaller, right=True))
            smaller += int(cumulative[value - 1]) if value else 0
            updated.append(((prefix << DIGIT_BITS) | value, smaller))
        found = updated
    last = [histograms[key >> DIGIT_BITS][key & (digits - 1)] for key, _ in found]
    return [(key, smaller, int(equal)) for (key, smaller), equal in zip(found, last, strict=True)]


def _tied_positions(blocks: KeyBlocks, searched: dict[str, tuple[int, int]]) -> dict[str, int]:
    """For each name -> (key, index): the flat position of the index-th entry (from 0) equal to
    key, which must exist; one pass, stopped once all are found."""
    found: dict[str, int] = {}
    if not searched:
        return found
    remaining = {name: index for name, (_, index) in searched.items()}
    offset = 0
    for keys in blocks():
        for name, (key, _) in searched.items():
            if name in found:
                continue
            tied = (keys == key).nonzero().flatten()
            if remaining[name] < len(tied):
                found[name] = offset + int(tied[remaining[name]])
            remaining[name] -= len(tied)
        offset += keys.numel()
        if len(found) == len(searched):
            return found
    missing = sorted(set(searched) - set(found))
    raise RuntimeError(f"the blocks changed between passes: no tied entry for {missing}")


def _admit_tied(
    mask: torch.Tensor,
    tied: torch.Tensor,
    offset: int,
    admitted: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Set `mask` where `tied` holds at the positions `admitted` accepts (a bound on position)."""
    where = tied.nonzero().flatten()
    if where.numel():
        mask[where[admitted(where + offset)]] = True
