"""Streamed training data: LLaVA-format files indexed, not loaded, and each rank's share of every
global batch read, rendered and decoded in `DataLoader` workers, so that memory does not grow
with the data set and the accelerator is not kept waiting. The batches are `TrainingData`'s:
the same typed sources and `SphinxBatches` order (one data type per global batch, length
grouping, mixture weights, deterministic in (seed, epoch)), the same rendering, budget and
collation into the same `Batch`.

    data = StreamedData.build(model.processor, sources, max_length=2048, on_error="skip")
    with data.loader(global_batch_size=32, seed=0, rank=rank, world_size=world) as loader:
        for local in loader:                   # LocalBatch: this rank's share, collated
            ...

What is checked when (`on_error` is "raise" or "skip", as for `TrainingData`; every bad record
is named by file and line):
- `build`, once per file (then cached beside it, see `record_index`): JSON syntax, the LLaVA
  fields, image names under the image root, one `<image>` per image;
- in a worker, when a record is loaded: rendering with the chat template, the budget (a record
  it leaves without an answer is dropped and counted, as `TrainingData` counts it) and image
  decoding. Under "raise" the worker's `RecordLoadError` ends the iteration in the main process;
  under "skip" the record leaves its batch, counted in the loader's `report`.

Lengths for SPHINX's length grouping (`lengths=`, see `record_lengths`): "characters" (the
default) costs nothing beyond the index: SPHINX's own measure, the characters of the turns,
made estimated tokens with the images' visual tokens added; "tokens" renders every record in
`build` (in `num_workers` processes, not cached): `TrainingData`'s lengths, so the batches are
exactly `TrainingData`'s, the same items in the same global batches and the same tensors.

How the trainer uses it (in place of `TrainingData.batches`/`example`/`collate`):

    loader = data.loader(config.global_batch_size, seed=config.seed, rank=dist.rank,
                         world_size=dist.world_size, start=(state.epoch, state.batch_in_epoch))
    with loader:
        shares = iter(loader)
        while state.step < config.max_steps and not time_is_up():
            local = next(shares)                               # never ends: stop_epoch=None
            total_labels = int(dist.sum(local.label_tokens))   # all-reduce: the global count
            batch = local.batch                                # this rank's share, collated
            # ... `batch.split` into micro-batches as today, each loss weighted by
            #     chunk.num_label_tokens / total_labels (times world_size under DDP);
            #     the step's log takes epoch=local.epoch
            state.step += 1
            state.epoch, state.batch_in_epoch = local.next_position   # what a checkpoint saves
    # loader.report.summary(): what loading dropped; data.report.summary(): what indexing did

The contract: every rank builds the same `StreamedData` and calls `loader` with the same
global batch size, seed and start; each then holds a disjoint share of every global batch
(contiguous, sizes differing by at most one; `global_batch_size` must divide by the world
size), so the ranks together read each record once per epoch. `local.label_tokens` is this
rank's count only: the loss weights need its sum over ranks, one scalar all-reduce per step.
Every rank passes over the same global batches (those smaller than the world), so the ranks stay
in step; `next_position` already accounts for them. Resuming from a stored position continues
with the first global batch not yet trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sphinx_mllm.data.mixtures import SphinxBatches, TypedSource
from sphinx_mllm.data.readers import Problems
from sphinx_mllm.pipeline.processor import SphinxProcessor
from sphinx_mllm.pipeline.training.data import (
    IMAGE_TEXT,
    TEXT_ONLY,
    Batch,
    DataReport,
    DataSource,
)
from sphinx_mllm.pipeline.training.rank_loader import LocalBatch, RankLoader, Share
from sphinx_mllm.pipeline.training.record_index import (
    RecordIndex,
    RecordLoadError,
    index_llava_file,
)
from sphinx_mllm.pipeline.training.record_lengths import (
    DROPPED,
    LENGTHS,
    estimated_tokens,
    rendered_lengths,
)
from sphinx_mllm.pipeline.training.record_rendering import (
    LoadedRecord,
    load_views,
    render_records,
)


class _Lengths(Sequence[int]):
    """A numpy array of lengths as `TypedSource` takes them: a sequence of ints (no Python int
    per record until one is asked for)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):  # SphinxBatches reads single items
        return int(self.array[index])


class StreamedData:
    """The indexed sources, their lengths for batching, and how a share of a batch is loaded."""

    def __init__(
        self,
        processor: SphinxProcessor,
        sources: Sequence[DataSource],
        indexes: Sequence[RecordIndex],
        lengths: Sequence[np.ndarray],
        *,
        max_length: int,
        on_error: str,
        report: DataReport,
    ) -> None:
        self.processor = processor
        self.sources = list(sources)
        self.indexes = list(indexes)
        self.lengths = list(lengths)
        self.max_length = max_length
        self.on_error = on_error
        self.report = report
        self._typed: list[TypedSource] = []
        self._rows: dict[str, tuple[int, np.ndarray]] = {}  # typed source -> (source, rows)
        for position, (source, index) in enumerate(zip(self.sources, self.indexes, strict=True)):
            usable = self.lengths[position] != DROPPED
            for data_type in (IMAGE_TEXT, TEXT_ONLY):
                wanted = (index.images > 0) == (data_type == IMAGE_TEXT)
                rows = np.flatnonzero(usable & wanted).astype(np.int32)
                if not len(rows):
                    continue
                name = f"{source.name}/{data_type}"
                lengths = _Lengths(self.lengths[position][rows])
                self._typed.append(TypedSource(name, data_type, lengths, ratio=source.weight))
                self._rows[name] = (position, rows)

    @classmethod
    def build(
        cls,
        processor: SphinxProcessor,
        sources: Sequence[DataSource],
        *,
        max_length: int = 1024,
        on_error: str = "raise",
        lengths: str = "characters",
        cache: bool = True,
        num_workers: int = 2,
    ) -> StreamedData:
        """Index every source (see the module docstring for what is checked now and what when
        loaded, and for `lengths`); `cache=False` neither reads nor writes the index caches;
        `num_workers` renders the "tokens" pass."""
        _check_arguments(processor, sources, lengths, on_error)
        report = DataReport()
        indexes = []
        for source in sources:
            index = index_llava_file(
                source.path, on_error=on_error, allow_outside=source.images_outside_root,
                cache=cache,
            )  # fmt: skip
            for reason, count in index.skipped.items():
                report.dropped[f"{source.name}: {reason}"] += count
            if not len(index):
                raise ValueError(f"{source.path}: no usable record ({report.summary()})")
            indexes.append(index)
        if lengths == "characters":
            found = estimated_tokens(processor, indexes)
        else:
            found = rendered_lengths(processor, sources, indexes, max_length, on_error,
                                      num_workers, report)  # fmt: skip
        for source, source_lengths in zip(sources, found, strict=True):
            kept = int((source_lengths != DROPPED).sum())
            if not kept:
                raise ValueError(f"{source.path}: no usable record ({report.summary()})")
            report.kept[source.name] = kept
        return cls(processor, sources, indexes, found, max_length=max_length,
                   on_error=on_error, report=report)  # fmt: skip

    def batches(self, global_batch_size: int, *, seed: int = 0) -> SphinxBatches:
        """SPHINX batching over the indexed records, as `TrainingData.batches`."""
        return SphinxBatches(self._typed, global_batch_size, seed=seed)

    def loader(
        self,
        global_batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: tuple[int, int] = (0, 0),
        stop_epoch: int | None = None,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        timeout: float = 600.0,
    ) -> RankLoader:
        """Rank `rank`'s shares of the global batches from `start` = (epoch, batch_in_epoch)
        until `stop_epoch` (None: without end), loaded by `num_workers` processes (0: in this
        one) with `prefetch_factor` shares each ahead; see the module docstring."""
        return RankLoader(
            self.load,
            self.batches(global_batch_size, seed=seed),
            rank=rank,
            world_size=world_size,
            start=start,
            stop_epoch=stop_epoch,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            timeout=timeout,
        )

    def record(self, typed_name: str, item: int) -> LoadedRecord:
        """Item `item` of a typed source of `batches()` (`"train/image-text"`), read now."""
        position, rows = self._rows[typed_name]
        row = int(rows[item])
        record, where = self.indexes[position].read_named(row)
        return LoadedRecord(record, self.sources[position], where)

    def load(self, share: Share) -> LocalBatch:
        """A share of a global batch read, rendered, fitted, decoded and collated (what a
        worker runs)."""
        loaded = [self.record(name, item) for name, item in share.items]
        rendered = render_records(
            self.processor, loaded, max_length=self.max_length, on_error=self.on_error
        )
        drops = rendered.drops
        kept, views, items = [], [], []
        for item, record, example in zip(share.items, loaded, rendered.examples, strict=True):
            if example is None:
                continue
            image_views = load_views(self.processor, example, record.where, self.on_error, drops)
            if image_views is not None:
                kept.append(example)
                views.append(image_views)
                items.append(item)
        if not kept:
            named = "; ".join(f"{where}: {reason}" for reason, where in drops[:3])
            raise RecordLoadError(
                f"every record of this rank's share of global batch {share.batch} of epoch "
                f"{share.epoch} was dropped when loaded, and a rank cannot skip a step: {named}"
            )
        inputs = self.processor.collate(
            [(example.input_ids, example.labels) for example in kept], views
        )
        batch = Batch(
            inputs.input_ids,
            inputs.attention_mask,
            inputs.labels,
            inputs.pixel_values,
            [example.task for example in kept],
            inputs.images_per_row,
        )
        return LocalBatch(
            batch,
            sum(example.num_label_tokens for example in kept),
            share.epoch,
            share.batch,
            share.data_type,
            items,
            drops,
            rendered.truncated,
        )


def _check_arguments(processor, sources: Sequence[DataSource], lengths: str, on_error: str):
    if not isinstance(processor, SphinxProcessor):
        raise TypeError(
            f"StreamedData.build takes the model's processor (model.processor), got "
            f"{type(processor).__name__}"
        )
    if processor.tokenizer is None:
        raise ValueError(
            "This model has no tokenizer, so conversations cannot be rendered; set "
            "tokenizer.source in its config (e.g. 'demo' or a tokenizer directory)"
        )
    if lengths not in LENGTHS:
        raise ValueError(f"lengths must be one of {LENGTHS}, got {lengths!r}")
    Problems(on_error)  # checks the policy's name
    if not sources:
        raise ValueError("StreamedData.build needs at least one data source")
    paths: dict[str, DataSource] = {}
    for source in sources:
        other = paths.setdefault(source.name, source)
        if other is not source:
            raise ValueError(
                f"Two data sources share the name {source.name!r} ({other.path} and "
                f"{source.path}); batches name their items by source, so rename one file"
            )
