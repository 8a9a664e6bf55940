"""Writing a merged model: sharded safetensors streamed tensor by tensor, an index, the
reference model's config and tokenizer files, all into a hidden directory beside the output that
is renamed into place only when complete.

Each shard's header is written first (every tensor's dtype and shape is known from the plan);
each tensor's bytes follow as soon as it is computed, so memory holds one output tensor at a
time, whatever the shard size. A run killed at any moment leaves only a hidden
`.NAME.partial-PID-*` directory (removed by the next run once its process is gone), never a
directory that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sphinx_mllm.core.weight_files import SAFETENSORS_INDEX
from sphinx_mllm.llm.merging.checkpoint import SAFETENSORS_DTYPES

TORCH_TO_SAFETENSORS = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "config.yaml",  # a sphinx-pipeline checkpoint's model config and manifest
    "checkpoint.json",
)
COPIED_DIRECTORIES = ("tokenizer",)  # a sphinx-pipeline checkpoint keeps its tokenizer here


@dataclass(frozen=True)
class OutputTensor:
    """A tensor the output will hold: its name, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(tensors: Sequence[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
    """Consecutive groups of at most `max_bytes` (a larger tensor gets a shard of its own)."""
    if max_bytes < 1:
        raise ValueError(f"The shard size must be positive, got {max_bytes}")
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return [shard for shard in shards if shard]


def shard_names(count: int) -> list[str]:
    return [f"model-{index:05d}-of-{count:05d}.safetensors" for index in range(1, count + 1)]


class StreamingShardWriter:
    """One safetensors file whose tensors are appended in the planned order."""

    def __init__(
        self, path: Path, tensors: Sequence[OutputTensor], metadata: dict[str, str]
    ) -> None:
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        for tensor in tensors:
            header[tensor.name] = {
                "dtype": TORCH_TO_SAFETENSORS[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + tensor.nbytes],
            }
            offset += tensor.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data section to 8 bytes
        self.path = path
        self._pending = list(tensors)
        self._file = path.open("wb")
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)

    def write(self, name: str, parts: Iterable[torch.Tensor]) -> None:
        """Append the next planned tensor, given whole or as consecutive row blocks."""
        expected = self._pending.pop(0)
        written = 0
        for part in parts:
            if (
                name != expected.name
                or part.dtype != expected.dtype
                or tuple(part.shape[1:]) != expected.shape[1:]
            ):
                raise RuntimeError(
                    f"Writing {name!r} {part.dtype} {tuple(part.shape)} into {self.path.name}, "
                    f"which expects {expected.name!r} {expected.dtype} {expected.shape} next"
                )
            data = part.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
            self._file.write(memoryview(data))
            written += data.nbytes
        if written != expected.nbytes:
            raise RuntimeError(
                f"{name!r}: wrote {written} bytes into {self.path.name}, planned {expected.nbytes}"
            )
        if not self._pending:
            self._file.close()

    @property
    def done(self) -> bool:
        return not self._pending


class AtomicOutputDirectory:
    """A hidden sibling directory, renamed to `target` by `commit()`."""

    def __init__(self, target: str | Path, *, force: bool = False) -> None:
        self.target = Path(target).expanduser().resolve()
        if self.target.exists() and not force:
            raise FileExistsError(f"{self.target} exists; choose another output or pass --force")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_partials(self.target)
        prefix = f".{self.target.name}.partial-{os.getpid()}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.target.parent))

    def commit(self) -> Path:
        """Move the finished directory into place (replacing an old one when forced)."""
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.replaced-{os.getpid()}")
            self.target.rename(old)
        self.path.rename(self.target)
        if old is not None:
            shutil.rmtree(old)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_abandoned_partials(target: Path) -> None:
    """Delete `.NAME.partial-PID-*` directories whose process no longer runs."""
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        pid = partial.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_index(
    directory: Path, shards: Sequence[Sequence[OutputTensor]], names: Sequence[str]
) -> None:
    weight_map = {
        tensor.name: name for shard, name in zip(shards, names, strict=True) for tensor in shard
    }
    total = sum(tensor.nbytes for shard in shards for tensor in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def copy_model_files(
    source: Path, directory: Path, out_dtype: torch.dtype | None, overrides: dict | None = None
) -> list[str]:
    """Copy the reference model's config, tokenizer and generation files; the config's dtype
    field is set to the output dtype and `overrides` are applied. Returns the names copied."""
    copied = []
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)
            copied.append(name)
    for name in COPIED_DIRECTORIES:
        if (source / name).is_dir():
            shutil.copytree(source / name, directory / name)
            copied.append(f"{name}/")
    config = directory / "config.json"
    if config.is_file() and (out_dtype is not None or overrides):
        settings = json.loads(config.read_text())
        if out_dtype is not None:
            dtype_name = str(out_dtype).removeprefix("torch.")
            for key in ("torch_dtype", "dtype"):
                if key in settings:
                    settings[key] = dtype_name
        settings.update(overrides or {})
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return copied
