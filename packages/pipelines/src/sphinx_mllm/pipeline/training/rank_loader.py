"""One rank's part of SPHINX's global batches, loaded in `torch.utils.data.DataLoader` workers.

The global batches of an epoch come from `SphinxBatches` (one data type each, length-grouped,
mixture-weighted, deterministic in (seed, epoch)); every rank computes the same order, in the
main process, and takes a contiguous share of each batch (`rank_share`: the shares of all ranks
are disjoint and together the whole batch, so each record is read by one rank, once an epoch).
A share is one `DataLoader` sample: a worker reads its records, renders, fits and collates them
with the processor into a `Batch`, decoding the images; `prefetch_factor` shares per worker are
loaded ahead. A worker's error is re-raised by the `DataLoader` in the main process, naming the
record; a worker that dies is reported by it too, and one that takes longer than `timeout`
seconds for a share ends the iteration with an error instead of a hang.

A global batch holding fewer records than there are ranks (the last, partial batch of a data
type) cannot give every rank a record, and a rank without one could not join the step's
collective operations: it is passed over by all ranks alike and counted in `LoadReport`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from sphinx_mllm.data.mixtures import SphinxBatches
from sphinx_mllm.pipeline.training.data import Batch

T = TypeVar("T")
KEPT_MESSAGES = 20


def rank_share(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """Rank `rank`'s contiguous share of a global batch: `items[rank * n // world_size :
    (rank + 1) * n // world_size]`, the trainer's split when n divides evenly, and never losing
    the remainder when it does not."""
    count = len(items)
    return items[rank * count // world_size : (rank + 1) * count // world_size]


@dataclass(frozen=True)
class Share:
    """What a worker loads: rank's items of global batch `batch` of `epoch`."""

    epoch: int
    batch: int
    data_type: str
    items: tuple[tuple[str, int], ...]


@dataclass
class LocalBatch:
    """This rank's share of one global batch, collated, and what the trainer needs with it.

    `label_tokens` counts the share's label tokens (as `Example.num_label_tokens` does); summed
    over the ranks it is the global batch's count that weights the loss. `items` are the
    (typed source, item) pairs loaded, `dropped` the (reason, where) of those left out when they
    were loaded (`on_error="skip"`, or the budget left them no answer)."""

    batch: Batch
    label_tokens: int
    epoch: int
    batch_in_epoch: int
    data_type: str
    items: list[tuple[str, int]]
    dropped: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0

    @property
    def next_position(self) -> tuple[int, int]:
        """The (epoch, batch_in_epoch) to store after training on this batch, and to resume
        from (a position past an epoch's end starts the next epoch)."""
        return self.epoch, self.batch_in_epoch + 1


@dataclass
class LoadReport:
    """What this rank's loader dropped when loading, and the global batches it passed over."""

    dropped: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    truncated: int = 0
    small_batches: int = 0
    small_batch_records: int = 0

    def add(self, local: LocalBatch) -> None:
        self.truncated += local.truncated
        for reason, where in local.dropped:
            self.dropped[reason] += 1
            if len(self.messages) < KEPT_MESSAGES:
                self.messages.append(f"{where}: {reason}")

    def summary(self) -> str:
        lines = [f"loading: truncated {self.truncated}"]
        if self.dropped:
            dropped = ", ".join(f"{why} {count}" for why, count in sorted(self.dropped.items()))
            lines.append(f"loading: dropped {sum(self.dropped.values())} ({dropped})")
        if self.small_batches:
            lines.append(
                f"loading: passed over {self.small_batches} global batches smaller than the "
                f"number of ranks ({self.small_batch_records} records)"
            )
        return "\n".join(lines)


class _EpochOrder:
    """An epoch's global batches as numpy arrays (no Python object per record): batch b holds
    `names[codes[i]]`, `items[i]` for i in `bounds[b]:bounds[b + 1]`."""

    def __init__(self, batches: list[tuple[str, list[tuple[str, int]]]], names: list[str]):
        code = {name: position for position, name in enumerate(names)}
        sizes = [len(items) for _, items in batches]
        self.bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.codes = np.fromiter(
            (code[name] for _, items in batches for name, _ in items), np.int16, self.bounds[-1]
        )
        self.items = np.fromiter(
            (item for _, items in batches for _, item in items), np.int64, self.bounds[-1]
        )
        self.types = [data_type for data_type, _ in batches]
        self.names = names

    def __len__(self) -> int:
        return len(self.types)

    def batch(self, index: int) -> list[tuple[str, int]]:
        span = slice(self.bounds[index], self.bounds[index + 1])
        return [
            (self.names[code], int(item))
            for code, item in zip(self.codes[span], self.items[span], strict=True)
        ]


class _ShareOrder(Sampler):
    """The shares of one rank, epoch after epoch from a position (runs in the main process)."""

    def __init__(self, batches: SphinxBatches, rank: int, world_size: int, start, stop_epoch,
                 report: LoadReport) -> None:  # fmt: skip
        self.batches = batches
        self.rank, self.world_size = rank, world_size
        self.start, self.stop_epoch = start, stop_epoch
        self.report = report
        self.names = [source.name for source in batches.sources]

    def __iter__(self) -> Iterator[Share]:
        epoch, first = self.start
        while self.stop_epoch is None or epoch < self.stop_epoch:
            order = _EpochOrder(self.batches.epoch(epoch), self.names)
            if all(len(order.batch(index)) < self.world_size for index in range(len(order))):
                raise ValueError(
                    f"No global batch of epoch {epoch} holds a record for each of the "
                    f"{self.world_size} ranks: too few records for this many ranks"
                )
            for index in range(first, len(order)):
                items = order.batch(index)
                if len(items) < self.world_size:
                    self.report.small_batches += 1
                    self.report.small_batch_records += len(items)
                    continue
                share = rank_share(items, self.rank, self.world_size)
                yield Share(epoch, index, order.types[index], tuple(share))
            epoch, first = epoch + 1, 0


class _Shares(Dataset):
    """The map-style dataset a `DataLoader` worker reads: a share in, a `LocalBatch` out."""

    def __init__(self, load: Callable[[Share], LocalBatch]) -> None:
        self.load = load

    def __getitem__(self, share: Share) -> LocalBatch:
        return self.load(share)


def stop_workers(iterator: Iterator[Any]) -> None:
    """Stop the workers of a `DataLoader` iterator now. Left to the iterator's `__del__`, one
    that a worker's error keeps alive in a traceback is shut down by the garbage collector,
    and then torch waits 5 s (MP_STATUS_CHECK_INTERVAL) for each worker (torch 2.14, measured);
    torch has no public call for it."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def keep_as_is(local: Any) -> Any:
    """The `DataLoader`'s collate function: a worker's result is already a batch."""
    return local


class RankLoader:
    """Iterates this rank's `LocalBatch`es from `start` = (epoch, batch_in_epoch) until
    `stop_epoch` (None: on and on; the trainer stops by steps). Close it, or leave its `with`
    block, to stop the workers of an iteration left unfinished."""

    def __init__(
        self,
        load: Callable[[Share], LocalBatch],
        batches: SphinxBatches,
        *,
        rank: int,
        world_size: int,
        start: tuple[int, int] = (0, 0),
        stop_epoch: int | None = None,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        timeout: float = 600.0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batches.batch_size % world_size:
            raise ValueError(
                f"global_batch_size {batches.batch_size} is not divisible by the {world_size} ranks"
            )
        epoch, batch = start
        if epoch < 0 or batch < 0:
            raise ValueError(f"start must be a (epoch, batch_in_epoch) >= (0, 0), got {start}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.report = LoadReport()
        self._order = _ShareOrder(batches, rank, world_size, (epoch, batch), stop_epoch,
                                  self.report)  # fmt: skip
        self._loader = DataLoader(
            _Shares(load),
            batch_size=None,
            sampler=self._order,
            num_workers=num_workers,
            collate_fn=keep_as_is,
            prefetch_factor=prefetch_factor if num_workers else None,
            timeout=timeout if num_workers else 0,
        )
        self._running: Iterator[LocalBatch] | None = None

    def __iter__(self) -> Iterator[LocalBatch]:
        self.close()
        self._running = self._iterate()
        return self._running

    def _iterate(self) -> Iterator[LocalBatch]:
        shares = iter(self._loader)
        try:
            for local in shares:
                self.report.add(local)
                yield local
        finally:
            stop_workers(shares)

    def close(self) -> None:
        """Stop the workers of the current iteration, if any."""
        if self._running is not None:
            self._running.close()
            self._running = None

    def __enter__(self) -> RankLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
