"""The lengths SPHINX's batching groups records by, for streamed data (`StreamedData.build`'s
`lengths=`):

- `estimated_tokens` ("characters"): from the index alone. SPHINX groups by the characters of a
  record's turns (LLaMA2-Accessory's `FinetuneDialogDataset` sorts each data type by
  `sum(len(turn['value']) for turn in conversations)`); here they become estimated tokens,
  `round(characters / c) + images * visual_tokens`, c the characters per token of the model's
  tokenizer measured on a sample of the data, so that images count too (a multi-image record
  groups with long ones). Among records with as many images the order is SPHINX's.
- `rendered_lengths` ("tokens"): every record rendered and fitted to the budget, in `DataLoader`
  workers: the length `TrainingData` groups by, exact, and the records the budget drops known up
  front. It costs a tokenizer pass over the data (about 2,000 records a second a process with
  the demo tokenizer) and is not cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from sphinx_mllm.data.templates import as_text_tokenizer
from sphinx_mllm.pipeline.processor import SphinxProcessor
from sphinx_mllm.pipeline.training.data import DataReport, DataSource
from sphinx_mllm.pipeline.training.rank_loader import keep_as_is, stop_workers
from sphinx_mllm.pipeline.training.record_index import RecordIndex
from sphinx_mllm.pipeline.training.record_rendering import LoadedRecord, render_records

LENGTHS = ("characters", "tokens")
ESTIMATE_SAMPLE = 64  # records whose characters per token calibrate the estimate
TOKEN_CHUNK = 256  # records rendered per task of the "tokens" pass
DROPPED = -1  # the length of a record the "tokens" pass dropped


def estimated_tokens(
    processor: SphinxProcessor, indexes: Sequence[RecordIndex]
) -> list[np.ndarray]:
    """Each record's estimated length in tokens (see "characters" in the module docstring)."""
    per_token = _characters_per_token(processor, indexes)
    visual = processor.num_visual_tokens()
    return [
        (np.rint(index.characters / per_token) + index.images.astype(np.int64) * visual).astype(
            np.int32
        )
        for index in indexes
    ]


def _characters_per_token(processor: SphinxProcessor, indexes: Sequence[RecordIndex]) -> float:
    """Characters per token of the processor's tokenizer on up to `ESTIMATE_SAMPLE` records
    spread over the sources (whitespace-joined turn texts, no template)."""
    tokenizer = as_text_tokenizer(processor.tokenizer)
    each = max(1, ESTIMATE_SAMPLE // len(indexes))
    characters = tokens = 0
    for index in indexes:
        for row in np.unique(np.linspace(0, len(index) - 1, min(each, len(index))).astype(int)):
            text = "\n".join(turn["value"] for turn in index.read(int(row))["conversations"])
            characters += len(text)
            tokens += len(tokenizer.encode_text(text, sequence_start=True))
    return max(characters, 1) / max(tokens, 1)


class _TokenLengths(Dataset):
    """The "tokens" pass over one chunk of a source (what a worker runs)."""

    def __init__(self, processor, sources, indexes, max_length: int, on_error: str) -> None:
        self.processor, self.sources, self.indexes = processor, sources, indexes
        self.max_length, self.on_error = max_length, on_error

    def __getitem__(self, chunk: tuple[int, int, int]):
        position, start, stop = chunk
        index = self.indexes[position]
        loaded = []
        for row in range(start, stop):
            record, where = index.read_named(row)
            loaded.append(LoadedRecord(record, self.sources[position], where))
        rendered = render_records(
            self.processor, loaded, max_length=self.max_length, on_error=self.on_error
        )
        lengths = np.array(
            [DROPPED if e is None else e.length for e in rendered.examples], dtype=np.int32
        )
        return chunk, lengths, rendered


def rendered_lengths(
    processor: SphinxProcessor,
    sources: Sequence[DataSource],
    indexes: Sequence[RecordIndex],
    max_length: int,
    on_error: str,
    num_workers: int,
    report: DataReport,
) -> list[np.ndarray]:
    """Each record's rendered, fitted length (`DROPPED` where it does not render or fit); what
    the pass drops is counted in `report`, by source and reason."""
    lengths = [np.full(len(index), DROPPED, dtype=np.int32) for index in indexes]
    chunks = [
        (position, start, min(start + TOKEN_CHUNK, len(index)))
        for position, index in enumerate(indexes)
        for start in range(0, len(index), TOKEN_CHUNK)
    ]
    loader = DataLoader(
        _TokenLengths(processor, sources, indexes, max_length, on_error),
        batch_size=None,
        sampler=chunks,
        num_workers=min(num_workers, len(chunks)),
        collate_fn=keep_as_is,
    )
    chunks_done = iter(loader)
    try:
        for (position, start, stop), chunk_lengths, rendered in chunks_done:
            lengths[position][start:stop] = chunk_lengths
            report.truncated += rendered.truncated
            for reason, _ in rendered.drops:
                report.dropped[f"{sources[position].name}: {reason}"] += 1
    finally:
        stop_workers(chunks_done)
    return lengths
