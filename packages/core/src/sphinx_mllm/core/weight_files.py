"""Finding the weight files of a checkpoint on disk, and reading safetensors headers, with no
PyTorch: shared by the encoder loader and the LLM merger.

A checkpoint is a single file, or a directory with a sharded safetensors index
(`model.safetensors.index.json`) or one of the usual single weight files.
"""

from __future__ import annotations

import json
import math
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


def read_index(index: str | Path) -> dict[str, Path]:
    """The weight map of a safetensors index: tensor name -> the shard file holding it. Every
    shard must be a file name inside the index's directory (never `../`, an absolute path or a
    subdirectory) and must exist."""
    index = Path(index)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        message = f"{index} is not a safetensors index with a weight_map: {error}"
        raise CheckpointError(message) from error
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index}: weight_map must map tensor names to shard files, got {weight_map!r}"
        )
    shards: dict[str, Path] = {}
    for name, shard in weight_map.items():
        if not _plain_file_name(shard):
            raise CheckpointError(
                f"{index}: entry {name!r} names the shard {shard!r}; a shard is a file name in "
                f"{index.parent}, with no directory part"
            )
        shards[name] = index.parent / shard
    missing = sorted({path.name for path in shards.values() if not path.is_file()})
    if missing:
        raise CheckpointError(f"{index} names shards that do not exist: {missing}")
    return shards


def _plain_file_name(value: object) -> bool:
    return isinstance(value, str) and value not in ("", ".", "..") and Path(value).name == value


def index_shards(index: str | Path) -> list[Path]:
    """The shard files a safetensors index names, in order, checked against their headers:
    every entry must name a shard (inside the index's directory) that holds that tensor, and
    every tensor of a shard must be listed, for that shard."""
    weight_map = read_index(index)
    shards = sorted(set(weight_map.values()))
    unseen = set(weight_map)
    for shard in shards:
        for name in read_safetensors_header(shard).tensors:
            if weight_map.get(name) != shard:
                listed = weight_map[name].name if name in weight_map else "no shard"
                raise CheckpointError(
                    f"{index}: tensor {name!r} is stored in {shard.name} but the index lists "
                    f"{listed} for it"
                )
            unseen.discard(name)
    if unseen:
        name = sorted(unseen)[0]
        raise CheckpointError(
            f"{index}: entry {name!r} names {weight_map[name].name}, which holds no such tensor "
            f"({len(unseen)} such entries)"
        )
    return shards


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
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path} has a corrupt safetensors header: a JSON object is expected, got "
            f"{type(header).__name__}"
        )
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings, got {metadata!r}")
    entries = {name: _tensor_entry(path, name, info) for name, info in header.items()}
    tensors, end = {}, 0
    for name, entry in sorted(entries.items(), key=lambda item: item[1].offsets):
        if (
            entry.offsets[0] != end
            or entry.nbytes != math.prod(entry.shape) * DTYPE_BYTES[entry.dtype]
        ):
            raise CheckpointError(
                f"{path} is corrupt: tensor {name!r} has inconsistent offsets {entry.offsets} "
                f"(expected to start at {end} and hold {entry.dtype} {list(entry.shape)})"
            )
        tensors[name] = entry
        end = entry.offsets[1]
    if 8 + length + end != size:
        raise CheckpointError(
            f"{path} is truncated or has trailing bytes: its header needs {8 + length + end} "
            f"bytes, the file has {size}"
        )
    return SafetensorsHeader(path, header_bytes, tensors, metadata)


def _tensor_entry(path: Path, name: str, info: object) -> TensorEntry:
    """One header entry, checked: a known dtype, a shape of non-negative integers, and two
    ordered non-negative integer offsets."""
    where = f"{path} has a corrupt safetensors header: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} is described by {info!r}, not an object")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in info]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{where} has dtype {dtype!r}; expected one of {list(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(_natural(dim) for dim in shape):
        raise CheckpointError(f"{where} has shape {shape!r}; expected a list of integers >= 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(offset) for offset in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(
            f"{where} has data_offsets {offsets!r}; expected [begin, end], integers with "
            "0 <= begin <= end"
        )
    return TensorEntry(dtype, tuple(shape), (offsets[0], offsets[1]))


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
