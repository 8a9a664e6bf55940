"""What each training step of a process gets from the data: its share of a global batch,
collated, with the whole global batch's label-token count (the loss weights need it), from the
saved position on. `StreamedData` makes the shares in its loader's workers; `TrainingData`
collates them from what it rendered in memory (equal shares: a remainder that does not divide
over the processes is left out, and a batch smaller than the world is passed by)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sphinx_mllm.data.mixtures import SphinxBatches
from sphinx_mllm.pipeline.training.data import Batch, TrainingData
from sphinx_mllm.pipeline.training.distributed import Distributed
from sphinx_mllm.pipeline.training.streaming import StreamedData


@dataclass(frozen=True)
class RankShare:
    """This process's share of a global batch (collated), the global batch's label tokens and
    rows, where the data stands after it, and its epoch."""

    batch: Batch
    label_tokens: int
    global_rows: int
    next_position: tuple[int, int]
    epoch: int


def rank_shares(
    data: TrainingData | StreamedData,
    batches: SphinxBatches,
    *,
    global_batch_size: int,
    seed: int,
    dist: Distributed,
    start: tuple[int, int],
) -> Iterator[RankShare]:
    """This process's share of each global batch of `batches` from `start` (epoch, batch in
    epoch) on, endlessly; closing the generator stops a streamed loader's workers."""
    if isinstance(data, StreamedData):
        loader = data.loader(
            global_batch_size, seed=seed, rank=dist.rank, world_size=dist.world_size, start=start
        )
        with loader:
            for local in loader:
                total = int(dist.sum(local.label_tokens))
                rows = int(dist.sum(len(local.batch.tasks)))
                yield RankShare(local.batch, total, rows, local.next_position, local.epoch)
        return
    epoch, index = start
    while True:
        order = batches.epoch(epoch)
        if not order:
            raise ValueError(f"epoch {epoch} of the training data holds no batch")
        if index >= len(order):
            epoch, index = epoch + 1, 0
            continue
        _, items = order[index]
        index += 1
        size = len(items) // dist.world_size
        if size == 0:  # fewer samples than processes: every process passes it by
            continue
        total = sum(data.example(name, item).num_label_tokens for name, item in items)
        mine = items[dist.rank * size : (dist.rank + 1) * size]
        yield RankShare(data.collate(mine), total, size * dist.world_size, (epoch, index), epoch)
