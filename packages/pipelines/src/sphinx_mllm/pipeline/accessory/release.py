"""A LLaMA2-Accessory release directory, read tensor by tensor without loading it.

A SPHINX release (`../shared/reference/accessory_format.md`) is `consolidated.RR-of-WW.model.pth`
(one torch zip-pickle per model-parallel rank), `config.json` (Accessory's `ModelArgs`),
`meta.json` (`{"llama_type": ...}`) and `tokenizer.model` (SentencePiece). Each shard maps
`llma.<name>` to a tensor, at its top level or under `"model"`. The fairscale-parallel LLM weights
are split across ranks: column-parallel ones on dim 0, row-parallel ones and the token embedding
on dim 1; every other tensor is repeated in full in each shard, and the copies must be identical.

Shards are opened with `torch.load(weights_only=True, mmap=True)` and nothing else: no pickle
global outside torch's allowlist is ever run, and a tensor's bytes are read only when asked for.
A memory map keeps the pages it has read resident until it is closed, so the shards are closed
and reopened after every `reopen_bytes` read (reopening reads only the small pickle): converting
a 20 GB shard never holds more than that much of it, plus the tensor being converted.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHARD_PATTERN = re.compile(r"^consolidated\.(\d+)-of-(\d+)\.model\.pth$")
KEY_PREFIX = "llma."
LLAMA_TYPES = ("llama_ens", "llama_ens5", "llama_ens_light", "llama_ens5_light")
# fairscale's split dims (Accessory's util/tensor_parallel.py `_MODEL_PARALLEL_MODULES`)
COLUMN_PARALLEL = re.compile(
    r"^(layers\.\d+\.attention\.w[qkv]|layers\.\d+\.feed_forward\.w[13]|output)\.weight$"
)
ROW_PARALLEL = re.compile(r"^(layers\.\d+\.attention\.wo|layers\.\d+\.feed_forward\.w2)\.weight$")
PARALLEL_EMBEDDING = "tok_embeddings.weight"
DEFAULT_REOPEN_BYTES = 256 * 1024**2


class AccessoryImportError(ValueError):
    """A release directory that cannot be imported: names the file, field or tensor."""


def split_dim(name: str) -> int | None:
    """The dim along which model-parallel ranks split the tensor `name` (None: repeated)."""
    if COLUMN_PARALLEL.match(name):
        return 0
    if ROW_PARALLEL.match(name) or name == PARALLEL_EMBEDDING:
        return 1
    return None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the joined checkpoint: its full shape, stored dtype and split dim."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    split: int | None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class AccessoryRelease:
    """The files of a release directory, checked, and its tensors joined across ranks.

    `params` is `config.json` with JSON nulls kept as None; `tensors` maps each name (without
    `llma.`) to its `TensorInfo`. `parts(name)` yields the joined tensor as consecutive row
    blocks, read from the memory-mapped shards."""

    def __init__(self, directory: str | Path, *, reopen_bytes: int = DEFAULT_REOPEN_BYTES) -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise FileNotFoundError(f"No LLaMA2-Accessory release directory at {self.directory}")
        self.params = self._json_object("config.json")
        meta = self._json_object("meta.json")
        self.llama_type = meta.get("llama_type")
        if self.llama_type not in LLAMA_TYPES:
            raise AccessoryImportError(
                f"{self.directory / 'meta.json'}: llama_type {self.llama_type!r} is not one this "
                f"importer supports; expected one of {LLAMA_TYPES} (SPHINX, SPHINX-1k, "
                "SPHINX-v2-1k, SPHINX-Tiny, SPHINX-Tiny-1k)"
            )
        self.tokenizer_file = self.directory / "tokenizer.model"
        if not self.tokenizer_file.is_file():
            raise AccessoryImportError(
                f"No tokenizer.model in {self.directory}: a release ships its SentencePiece model"
            )
        self.shard_files = self._shard_files()
        self.reopen_bytes = reopen_bytes
        self._states: list[dict[str, torch.Tensor]] | None = None
        self._read_since_open = 0
        self.tensors = self._index()

    @property
    def world_size(self) -> int:
        return len(self.shard_files)

    # -- the files -------------------------------------------------------------------------------

    def _json_object(self, name: str) -> dict[str, Any]:
        path = self.directory / name
        if not path.is_file():
            raise AccessoryImportError(f"No {name} in {self.directory}: not an Accessory release")
        try:
            value = json.loads(path.read_text())
        except ValueError as error:
            raise AccessoryImportError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(value, dict):
            raise AccessoryImportError(
                f"{path} must hold a JSON object, not {type(value).__name__}"
            )
        return value

    def _shard_files(self) -> list[Path]:
        found: dict[int, dict[int, Path]] = {}
        for path in self.directory.iterdir():
            match = SHARD_PATTERN.match(path.name)
            if match:
                rank, world = int(match[1]), int(match[2])
                found.setdefault(world, {})[rank] = path
        if not found:
            others = sorted(p.name for p in self.directory.glob("*.pth"))
            hint = f" (found {others}: Meta or diff checkpoints are not SPHINX releases)"
            raise AccessoryImportError(
                f"No consolidated.RR-of-WW.model.pth shards in {self.directory}"
                + (hint if others else "")
            )
        if len(found) > 1:
            raise AccessoryImportError(
                f"{self.directory} mixes shards of model-parallel sizes {sorted(found)}; keep one"
            )
        world, ranks = next(iter(found.items()))
        missing = [rank for rank in range(world) if rank not in ranks]
        extra = sorted(rank for rank in ranks if rank >= world)
        if missing or extra:
            names = [f"consolidated.{rank:02d}-of-{world:02d}.model.pth" for rank in missing]
            raise AccessoryImportError(
                f"{self.directory}: the release has {world} model-parallel shards but "
                + (f"{names} are missing" if missing else f"ranks {extra} are out of range")
            )
        return [ranks[rank] for rank in range(world)]

    # -- the shards ------------------------------------------------------------------------------

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as error:
            raise AccessoryImportError(
                f"{path}: refused to unpickle it (only tensors and plain containers are read, "
                f"never arbitrary objects): {error}"
            ) from error
        except (RuntimeError, OSError, EOFError) as error:
            raise AccessoryImportError(
                f"{path} is not a readable torch checkpoint: {error}"
            ) from error
        if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
            loaded = loaded["model"]
        if not isinstance(loaded, dict):
            raise AccessoryImportError(
                f"{path} holds a {type(loaded).__name__}; expected a mapping of names to tensors"
            )
        state = {}
        for key, value in loaded.items():
            if not isinstance(key, str) or not key.startswith(KEY_PREFIX):
                raise AccessoryImportError(
                    f"{path}: key {key!r} does not start with {KEY_PREFIX!r} (every tensor of an "
                    "Accessory checkpoint lives under its MetaModel's `llma`)"
                )
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                what = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise AccessoryImportError(
                    f"{path}: {key} is {what}; expected a floating-point tensor"
                )
            state[key[len(KEY_PREFIX) :]] = value
        return state

    def _shards(self) -> list[dict[str, torch.Tensor]]:
        if self._states is None:
            self._states = [self._load(path) for path in self.shard_files]
            self._read_since_open = 0
        return self._states

    def close(self) -> None:
        """Drop the memory maps (their resident pages go with them); reading reopens them."""
        self._states = None

    def _index(self) -> dict[str, TensorInfo]:
        shards = self._shards()
        names = list(shards[0])
        for rank, state in enumerate(shards[1:], start=1):
            if set(state) != set(names):
                only_first = sorted(set(names) - set(state))[:8]
                only_here = sorted(set(state) - set(names))[:8]
                raise AccessoryImportError(
                    f"{self.shard_files[rank]} and {self.shard_files[0].name} hold different "
                    f"tensors: only in rank 0 {only_first}, only in rank {rank} {only_here}"
                )
        tensors = {}
        for name in names:
            split = split_dim(name) if self.world_size > 1 else None
            shapes = {tuple(state[name].shape) for state in shards}
            dtypes = {state[name].dtype for state in shards}
            if len(shapes) > 1 or len(dtypes) > 1:
                raise AccessoryImportError(
                    f"{name} has different shapes or dtypes across the shards: "
                    f"{[tuple(s[name].shape) for s in shards]}, {sorted(map(str, dtypes))}"
                )
            shape = list(next(iter(shapes)))
            if split is not None:
                if len(shape) <= split:
                    raise AccessoryImportError(
                        f"{name} is split on dim {split} across ranks but has shape {tuple(shape)}"
                    )
                shape[split] *= self.world_size
            tensors[name] = TensorInfo(tuple(shape), next(iter(dtypes)), split)
        return tensors

    # -- reading ---------------------------------------------------------------------------------

    def _opened(self, nbytes: int) -> list[dict[str, torch.Tensor]]:
        """The shards, reopened first when enough of them has been read since they were opened."""
        if self._states is not None and self._read_since_open + nbytes > self.reopen_bytes:
            self.close()
        shards = self._shards()
        self._read_since_open += nbytes
        return shards

    def rank_parts(self, name: str) -> list[torch.Tensor]:
        """Each rank's piece of the tensor `name` (for a repeated tensor: rank 0's only, after
        checking the other ranks hold the same values). Views of the memory maps."""
        info = self.tensors[name]
        shards = self._opened(info.nbytes * (1 if info.split is not None else self.world_size))
        pieces = [state[name] for state in shards]
        if info.split is not None:
            return pieces
        for rank, piece in enumerate(pieces[1:], start=1):
            if not torch.equal(piece, pieces[0]):
                raise AccessoryImportError(
                    f"{name} is repeated in every shard but {self.shard_files[rank].name} holds "
                    f"other values than {self.shard_files[0].name} (max |difference| "
                    f"{(piece.float() - pieces[0].float()).abs().max().item():.3g})"
                )
        return pieces[:1]

    def parts(self, name: str, block_bytes: int = 64 * 1024**2) -> Iterator[torch.Tensor]:
        """The joined tensor `name` as consecutive row blocks (dim 0): each rank's piece for a
        tensor split on dim 0, rows of the ranks' pieces joined on dim 1 otherwise."""
        info = self.tensors[name]
        pieces = self.rank_parts(name)
        if info.split != 1:
            yield from pieces
            return
        row_bytes = max(1, info.nbytes // max(1, info.shape[0]))
        rows = max(1, block_bytes // row_bytes)
        for start in range(0, info.shape[0], rows):
            yield torch.cat([piece[start : start + rows] for piece in pieces], dim=1)

    def full(self, name: str) -> torch.Tensor:
        """The whole joined tensor `name` (for the small ones a conversion reshapes)."""
        return torch.cat(list(self.parts(name)), dim=0)
