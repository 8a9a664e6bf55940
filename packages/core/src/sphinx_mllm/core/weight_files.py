"""Finding the weight files of a checkpoint on disk, and reading safetensors headers, with no
PyTorch: shared by the encoder loader and the LLM merger.

A checkpoint is a single file, or a directory with a sharded safetensors index
(`model.safetensors.index.json`) or one of the usual single weight files.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILES = ("model.safetensors",)
PICKLE_FILES = ("pytorch_model.bin",)
# safetensors' own limit on the JSON header (100 MB): a larger length means a corrupt file
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, corrupt, truncated, or inconsistent."""


def find_weight_files(
    path: str | Path, single_files: Sequence[str] = SAFETENSORS_FILES
) -> list[Path]:
    """The weight files at `path`: the file itself, the shards listed by a safetensors index
    (each must exist), the first of `single_files` present, or a lone `*.safetensors`."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"No weights file or directory at {path}")
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        return index_shards(index)
    for name in single_files:
        if (path / name).is_file():
            return [path / name]
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates
    found = sorted(child.name for child in path.iterdir())
    raise FileNotFoundError(
        f"No weights in {path}: expected {SAFETENSORS_INDEX}, one of {list(single_files)} or a "
        f"single *.safetensors file; found {found}"
    )


def index_shards(index: Path) -> list[Path]:
    """The shard files a safetensors index names, in order; a missing one is an error."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        message = f"{index} is not a safetensors index with a weight_map: {error}"
        raise CheckpointError(message) from error
    shards = sorted(set(weight_map.values()))
    missing = [shard for shard in shards if not (index.parent / shard).is_file()]
    if missing:
        raise CheckpointError(f"{index} names shards that do not exist: {missing}")
    return [index.parent / shard for shard in shards]


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file, as its header describes it."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # begin, end within the data section

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of a safetensors file, checked against the file's size."""

    path: Path
    header_bytes: bytes
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Parse and check the header: a truncated or corrupt file is refused before any tensor is
    read (offsets must tile the data section, sizes must match dtypes and shapes)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file: {size} bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise CheckpointError(
                f"{path} is corrupt or truncated: header of {length} bytes, file of {size}"
            )
        header_bytes = file.read(length)
    try:
        header = json.loads(header_bytes)
    except ValueError as error:
        raise CheckpointError(f"{path} has a corrupt safetensors header: {error}") from error
    metadata = header.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        entry = TensorEntry(info["dtype"], tuple(info["shape"]), tuple(info["data_offsets"]))
        count = 1
        for dim in entry.shape:
            count *= dim
        if entry.offsets[0] != end or entry.nbytes != count * DTYPE_BYTES.get(entry.dtype, 0):
            raise CheckpointError(
                f"{path} is corrupt: tensor {name!r} has inconsistent offsets {entry.offsets}"
            )
        tensors[name] = entry
        end = entry.offsets[1]
    if 8 + length + end != size:
        raise CheckpointError(
            f"{path} is truncated or has trailing bytes: its header needs {8 + length + end} "
            f"bytes, the file has {size}"
        )
    return SafetensorsHeader(path, header_bytes, tensors, metadata)
