"""Mixing task datasets for training.

`Mixture` draws (source, item) pairs step by step with probabilities from a strategy: fixed
weights, proportional to size, capped-proportional (sizes capped first), or temperature sampling
(p ~ size ** (1 / T)). Each draw is a pure function of (seed, epoch, step) and a small state (how
many items each source has given this epoch), so a run resumes exactly from a saved state.

`SphinxBatches` is SPHINX's way: every source subsampled by its ratio, every global batch drawn
from one data type (image-text or text-only), items sorted by length within a type in windows of
a few batches (LLaMA2-Accessory's length grouping), the batches shuffled; deterministic in
(seed, epoch) and resumable from (epoch, batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Strategy = Literal["fixed", "proportional", "capped", "temperature"]


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\0".join(str(part) for part in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class MixtureSource:
    """One dataset of a mixture: its size, and its weight for the fixed strategy."""

    name: str
    size: int
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"Mixture source {self.name!r} is empty")
        if self.weight < 0:
            raise ValueError(f"Mixture source {self.name!r} has a negative weight {self.weight}")


@dataclass
class MixtureState:
    """Where a mixture stands: the epoch, the step, and the draws each source has given."""

    epoch: int = 0
    step: int = 0
    drawn: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "drawn": dict(self.drawn)}

    @classmethod
    def from_dict(cls, data: dict) -> MixtureState:
        return cls(
            int(data["epoch"]), int(data["step"]), {k: int(v) for k, v in data["drawn"].items()}
        )


class Mixture:
    """Step-by-step sampling of (source name, item index) with a strategy's probabilities."""

    def __init__(
        self,
        sources: Sequence[MixtureSource],
        strategy: Strategy = "fixed",
        *,
        cap: int | None = None,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ValueError("A mixture needs at least one source")
        names = [source.name for source in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"Mixture source names must be unique: {names}")
        self.sources = list(sources)
        self.seed = seed
        self.probabilities = self._probabilities(strategy, cap, temperature)
        self._permutations: dict[tuple[int, str], np.ndarray] = {}

    def _probabilities(self, strategy: str, cap: int | None, temperature: float) -> np.ndarray:
        sizes = np.array([source.size for source in self.sources], dtype=np.float64)
        if strategy == "fixed":
            raw = np.array([source.weight for source in self.sources], dtype=np.float64)
        elif strategy == "proportional":
            raw = sizes
        elif strategy == "capped":
            if cap is None or cap < 1:
                raise ValueError(f"The capped strategy needs a positive cap, got {cap!r}")
            raw = np.minimum(sizes, cap)
        elif strategy == "temperature":
            if temperature <= 0:
                raise ValueError(f"The temperature must be positive, got {temperature}")
            raw = sizes ** (1.0 / temperature)
        else:
            raise ValueError(
                f"Unknown mixture strategy {strategy!r}; expected fixed, proportional, capped "
                "or temperature"
            )
        if raw.sum() <= 0:
            raise ValueError("Every weight of the mixture is zero")
        return raw / raw.sum()

    def _item(self, epoch: int, source: MixtureSource, count: int) -> int:
        """The count-th item of a source in an epoch: a fresh permutation per pass over it."""
        passes, position = divmod(count, source.size)
        key = (epoch * 1_000_003 + passes, source.name)
        if key not in self._permutations:
            if len(self._permutations) > 4 * len(self.sources):
                self._permutations.clear()
            self._permutations[key] = _rng(self.seed, epoch, passes, source.name).permutation(
                source.size
            )
        return int(self._permutations[key][position])

    def draw(self, state: MixtureState) -> tuple[str, int]:
        """The next (source, item) for `state`, which it advances."""
        choice = _rng(self.seed, state.epoch, state.step).choice(
            len(self.sources), p=self.probabilities
        )
        source = self.sources[int(choice)]
        count = state.drawn.get(source.name, 0)
        state.drawn[source.name] = count + 1
        state.step += 1
        return source.name, self._item(state.epoch, source, count)

    def iterate(self, steps: int, state: MixtureState | None = None) -> Iterator[tuple[str, int]]:
        state = state if state is not None else MixtureState()
        for _ in range(steps):
            yield self.draw(state)


@dataclass(frozen=True)
class TypedSource:
    """A source for SPHINX batching: its data type, the ratio it is subsampled to, and the
    length of each item (tokens), which the batches are grouped by."""

    name: str
    data_type: str
    lengths: Sequence[int]
    ratio: float = 1.0


class SphinxBatches:
    """Global batches of one data type each, length-grouped, deterministic in (seed, epoch)."""

    def __init__(
        self, sources: Sequence[TypedSource], batch_size: int, *, seed: int = 0, window: int = 8
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sources = list(sources)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window

    def epoch(self, epoch: int) -> list[tuple[str, list[tuple[str, int]]]]:
        """Every batch of an epoch: (data type, [(source, item), ...])."""
        by_type: dict[str, list[tuple[int, str, int]]] = {}
        for source in self.sources:
            rng = _rng(self.seed, epoch, "subsample", source.name)
            keep = max(1, round(len(source.lengths) * source.ratio)) if source.lengths else 0
            chosen = rng.permutation(len(source.lengths))[:keep]
            by_type.setdefault(source.data_type, []).extend(
                (source.lengths[i], source.name, int(i)) for i in chosen
            )
        batches = []
        for data_type, items in sorted(by_type.items()):
            order = _rng(self.seed, epoch, "shuffle", data_type).permutation(len(items))
            shuffled = [items[i] for i in order]
            span = self.batch_size * self.window
            for start in range(0, len(shuffled), span):
                window = sorted(shuffled[start : start + span], key=lambda item: item[0])
                for first in range(0, len(window), self.batch_size):
                    batch = window[first : first + self.batch_size]
                    batches.append((data_type, [(name, index) for _, name, index in batch]))
        order = _rng(self.seed, epoch, "batches").permutation(len(batches))
        return [batches[i] for i in order]

    def resume(self, epoch: int, batch: int) -> Iterator[tuple[str, list[tuple[str, int]]]]:
        """The batches of `epoch` from index `batch` on (a saved position)."""
        yield from self.epoch(epoch)[batch:]
