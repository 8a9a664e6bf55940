"""Writing a merged model: sharded safetensors streamed tensor by tensor, an index, the
reference model's config and tokenizer files (checked before the merge starts), all into the
hidden directory of a `sphinx_mllm.core.outputs.AtomicOutputDirectory`, renamed into place only
when complete.

Each shard's header is written first (every tensor's dtype and shape is known from the plan);
each tensor's bytes follow as soon as it is computed, so memory holds one output tensor at a
time, whatever the shard size.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sphinx_mllm.core.weight_files import SAFETENSORS_INDEX, CheckpointError
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
# Copied JSON files that must hold one JSON object (the vocabularies are not parsed: large)
JSON_OBJECT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "checkpoint.json",
)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# Fields of config.json that the output or its loaders rely on: name -> (check, expected)
CONFIG_FIELDS = {
    "model_type": (lambda value: isinstance(value, str), "a string"),
    "architectures": (
        lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value),
        "a list of strings",
    ),
    "torch_dtype": (lambda value: value is None or isinstance(value, str), "a string or null"),
    "dtype": (lambda value: value is None or isinstance(value, str), "a string or null"),
    "num_hidden_layers": (_positive_int, "an integer >= 1"),
    "hidden_size": (_positive_int, "an integer >= 1"),
    "vocab_size": (_positive_int, "an integer >= 1"),
    "tie_word_embeddings": (lambda value: isinstance(value, bool), "true or false"),
}


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


def write_index(
    directory: Path, shards: Sequence[Sequence[OutputTensor]], names: Sequence[str]
) -> None:
    weight_map = {
        tensor.name: name for shard, name in zip(shards, names, strict=True) for tensor in shard
    }
    total = sum(tensor.nbytes for shard in shards for tensor in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def read_model_config(directory: Path) -> dict | None:
    """The model's `config.json` (None if it has none), checked: one JSON object whose fields
    in CONFIG_FIELDS have the types the output relies on."""
    settings = _json_object(directory / "config.json")
    if settings is None:
        return None
    for key, (valid, expected) in CONFIG_FIELDS.items():
        if key in settings and not valid(settings[key]):
            raise CheckpointError(
                f"{directory / 'config.json'}: {key} is {settings[key]!r}; expected {expected}"
            )
    return settings


def check_model_files(directory: Path) -> None:
    """Refuse, before any work, the reference model's files that would be copied broken:
    `config.json` (see `read_model_config`) and the other JSON_OBJECT_FILES."""
    read_model_config(directory)
    for name in JSON_OBJECT_FILES[1:]:
        _json_object(directory / name)


def _json_object(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


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
        settings = read_model_config(directory)
        if out_dtype is not None:
            dtype_name = str(out_dtype).removeprefix("torch.")
            for key in ("torch_dtype", "dtype"):
                if key in settings:
                    settings[key] = dtype_name
        settings.update(overrides or {})
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return copied
