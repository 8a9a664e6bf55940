"""A model checkpoint read lazily, tensor by tensor: a Hugging Face model directory (one
`model.safetensors` or shards with `model.safetensors.index.json`), or a single `.safetensors`
file. Headers are checked when the checkpoint is opened (truncated or corrupt files are refused
before anything is merged). Each tensor is read straight into its own buffer with a positioned
read (`os.preadv`, safe from several threads), not through a memory map: mapped pages would stay
resident and count against the process as the merge walks through the files, while a read keeps
the process's memory at the tensors in use. PyTorch pickles (`pytorch_model.bin`) are read only
with `allow_pickle=True`, and then with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch

from sphinx_mllm.core.weight_files import (
    PICKLE_FILES,
    SAFETENSORS_FILES,
    CheckpointError,
    find_weight_files,
    read_safetensors_header,
)

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


class ModelCheckpoint:
    """The tensors of one model, by name, read on demand."""

    def __init__(
        self, path: str | Path, *, name: str | None = None, allow_pickle: bool = False
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name or self.path.name
        self.directory = self.path if self.path.is_dir() else self.path.parent
        single = SAFETENSORS_FILES + (PICKLE_FILES if allow_pickle else ())
        self.files = find_weight_files(self.path, single_files=single)
        self._entries: dict[str, tuple[Path, torch.dtype, tuple[int, ...]]] = {}
        self._locations: dict[str, tuple[int, int]] = {}  # name -> (file offset, bytes)
        self._descriptors: dict[Path, int] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        self._header_digest = hashlib.sha256()
        for file in self.files:
            if file.suffix == ".safetensors":
                self._add_safetensors(file)
            elif allow_pickle:
                self._add_pickle(file)
            else:
                raise CheckpointError(
                    f"{file} is a PyTorch pickle; pass allow_pickle=True (--allow-pickle) to read "
                    "it with weights_only=True, or convert it to safetensors"
                )

    def _add_safetensors(self, file: Path) -> None:
        header = read_safetensors_header(file)
        self._header_digest.update(header.header_bytes)
        self._header_digest.update(str(file.stat().st_size).encode())
        data_start = 8 + len(header.header_bytes)
        for tensor_name, entry in header.tensors.items():
            if entry.dtype not in SAFETENSORS_DTYPES:
                raise CheckpointError(
                    f"{file}: tensor {tensor_name!r} has unsupported dtype {entry.dtype}"
                )
            self._claim(tensor_name, file, SAFETENSORS_DTYPES[entry.dtype], entry.shape)
            self._locations[tensor_name] = (data_start + entry.offsets[0], entry.nbytes)
        self._descriptors[file] = os.open(file, os.O_RDONLY)

    def _add_pickle(self, file: Path) -> None:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:
            raise CheckpointError(
                f"Could not read {file} with weights_only=True: {error}"
            ) from error
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CheckpointError(f"{file} does not hold a flat dict of tensors")
        self._header_digest.update(file.name.encode() + str(file.stat().st_size).encode())
        for tensor_name, tensor in state.items():
            self._claim(tensor_name, file, tensor.dtype, tuple(tensor.shape))
            self._pickled[tensor_name] = tensor

    def _claim(
        self, tensor_name: str, file: Path, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> None:
        if tensor_name in self._entries:
            raise CheckpointError(
                f"Tensor {tensor_name!r} of {self.name} is stored twice: in "
                f"{self._entries[tensor_name][0].name} and {file.name}"
            )
        self._entries[tensor_name] = (file, dtype, shape)

    def __enter__(self) -> ModelCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()

    def __repr__(self) -> str:
        return (
            f"ModelCheckpoint({self.name!r}, {len(self._entries)} tensors, {len(self.files)} files)"
        )

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, tensor_name: object) -> bool:
        return tensor_name in self._entries

    def shape(self, tensor_name: str) -> tuple[int, ...]:
        return self._entries[tensor_name][2]

    def dtype(self, tensor_name: str) -> torch.dtype:
        return self._entries[tensor_name][1]

    def file_of(self, tensor_name: str) -> Path:
        """The weight file holding the tensor."""
        return self._entry(tensor_name)[0]

    def get(self, tensor_name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor, read now from its file; `rows` = (start, stop) reads only those rows of
        the first dimension (the elements, for a 1-D tensor)."""
        _, _, shape = self._entry(tensor_name)
        if rows is None:
            return self._read(tensor_name, 0, math.prod(shape), shape)
        row = math.prod(shape[1:])
        return self._read(
            tensor_name, rows[0] * row, rows[1] * row, (rows[1] - rows[0], *shape[1:])
        )

    def get_flat(self, tensor_name: str, start: int, stop: int) -> torch.Tensor:
        """Elements `[start, stop)` of the flattened tensor, as a 1-D tensor."""
        self._entry(tensor_name)
        return self._read(tensor_name, start, stop, (stop - start,))

    def _entry(self, tensor_name: str) -> tuple[Path, torch.dtype, tuple[int, ...]]:
        if tensor_name not in self._entries:
            raise KeyError(f"{self.name} has no tensor {tensor_name!r}")
        return self._entries[tensor_name]

    def _read(
        self, tensor_name: str, start: int, stop: int, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Elements `[start, stop)` of the flattened tensor, in `shape`."""
        file, dtype, _ = self._entries[tensor_name]
        if tensor_name in self._pickled:
            return self._pickled[tensor_name].reshape(-1)[start:stop].reshape(shape)
        offset, size = self._locations[tensor_name]
        element = torch.empty((), dtype=dtype).element_size()
        offset, size = offset + start * element, (stop - start) * element
        tensor = torch.empty(shape, dtype=dtype)
        if size:
            buffer = tensor.reshape(-1).view(torch.uint8).numpy()
            if os.preadv(self._descriptors[file], [buffer], offset) != size:
                raise CheckpointError(f"{file} ended while reading tensor {tensor_name!r}")
        return tensor

    def fingerprint(self) -> str:
        """sha256 of the safetensors headers (names, dtypes, shapes, offsets) and file sizes: it
        identifies the structure and layout of the files; `content_fingerprint` reads the data."""
        return self._header_digest.hexdigest()

    def content_fingerprint(self) -> str:
        """sha256 of every weight file's bytes (reads the whole checkpoint)."""
        digest = hashlib.sha256()
        for file in self.files:
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
        return digest.hexdigest()
