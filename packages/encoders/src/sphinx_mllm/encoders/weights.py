"""Encoder weights in local files: find them, read them lazily, fit them to a module, save them.

safetensors files are read tensor by tensor (memory mapped); PyTorch pickles are read only with
`torch.load(weights_only=True)`, which refuses arbitrary objects. A checkpoint of a larger model
(a whole CLIP, a whole BLIP-2) fits when the adapter names the prefix its vision part sits under
(`visual.`) and the prefixes of the parts it does not hold (`language_model.`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sphinx_mllm.core.weight_files import find_weight_files as find_files

KNOWN_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)
PICKLE_WRAPPER_KEYS = ("state_dict", "model", "module")


class WeightsMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the module they are loaded into."""


@dataclass(frozen=True)
class LoadReport:
    """What a load did: which prefix matched, how many tensors loaded and were skipped."""

    files: tuple[Path, ...]
    prefix: str
    loaded: int
    skipped: int


def find_weight_files(path: str | Path) -> list[Path]:
    """The weight files at `path`: the file itself, the shards of a safetensors index, or the
    single known weight file of a directory (open_clip's names included)."""
    return find_files(path, single_files=KNOWN_WEIGHT_FILES)


class CheckpointReader:
    """Lazy access to the tensors of one or more weight files, by name."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = tuple(files)
        self._stack = ExitStack()
        self._where: dict[str, object] = {}
        for file in self.files:
            if file.suffix == ".safetensors":
                handle = self._stack.enter_context(safe_open(str(file), framework="pt"))
                self._where.update(dict.fromkeys(handle.keys(), handle))
            else:
                self._where.update(_read_pickle(file))

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def names(self) -> list[str]:
        return list(self._where)

    def tensor(self, key: str) -> torch.Tensor:
        source = self._where[key]
        return source if isinstance(source, torch.Tensor) else source.get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        source = self._where[key]
        if isinstance(source, torch.Tensor):
            return tuple(source.shape)
        return tuple(source.get_slice(key).get_shape())


def _read_pickle(file: Path) -> dict[str, torch.Tensor]:
    try:
        content = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Could not read {file} as a PyTorch weights file with weights_only=True (pickles that "
            f"hold arbitrary objects are refused; convert the file to safetensors): {error}"
        ) from error
    while isinstance(content, dict) and not _is_tensor_dict(content):
        wrapper = next((key for key in PICKLE_WRAPPER_KEYS if key in content), None)
        if wrapper is None:
            raise ValueError(f"{file} holds a dict without tensors under {PICKLE_WRAPPER_KEYS}")
        content = content[wrapper]
    if not isinstance(content, dict):
        raise ValueError(f"{file} holds a {type(content).__name__}, not a dict of tensors")
    return content


def _is_tensor_dict(content: dict) -> bool:
    return bool(content) and all(isinstance(value, torch.Tensor) for value in content.values())


def _strip(keys: Iterable[str], prefix: str) -> dict[str, str]:
    return {key[len(prefix) :]: key for key in keys if key.startswith(prefix)}


def load_weights(
    module: nn.Module,
    path: str | Path,
    *,
    prefixes: Sequence[str] = ("",),
    ignore: Sequence[str] = (),
) -> LoadReport:
    """Load the weights at `path` into `module`, strictly.

    The checkpoint's keys are matched with the module's after removing one of `prefixes` (the
    one that matches most keys). Keys outside a non-empty prefix belong to other parts of a
    larger model and are skipped, as are keys under `ignore`; every other key must fit, and every
    tensor of the module must be provided, with the same shape. Tensors are converted to the
    dtype of the module's tensors; a module on the meta device receives them by assignment.
    """
    files = find_weight_files(path)
    expected = module.state_dict()
    with CheckpointReader(files) as reader:
        keys = [key for key in reader.names() if not key.startswith(tuple(ignore))]
        prefix = max(prefixes, key=lambda p: len(_strip(keys, p).keys() & expected.keys()))
        provided = _strip(keys, prefix)
        _check_fit(module, files, prefix, provided, expected, reader)
        on_meta = any(tensor.is_meta for tensor in expected.values())
        state = {
            name: reader.tensor(provided[name]).to(dtype=expected[name].dtype) for name in expected
        }
        module.load_state_dict(state, strict=True, assign=on_meta)
    return LoadReport(tuple(files), prefix, len(state), len(reader.names()) - len(state))


def _check_fit(
    module: nn.Module,
    files: Sequence[Path],
    prefix: str,
    provided: dict[str, str],
    expected: dict[str, torch.Tensor],
    reader: CheckpointReader,
) -> None:
    where = ", ".join(str(file) for file in files)
    missing = sorted(expected.keys() - provided.keys())
    unexpected = sorted(provided[name] for name in provided.keys() - expected.keys())
    mismatched = [
        f"{provided[name]}: {reader.shape(provided[name])} in the file, "
        f"{tuple(expected[name].shape)} in the module"
        for name in sorted(provided.keys() & expected.keys())
        if reader.shape(provided[name]) != tuple(expected[name].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"Weights in {where} do not fit {type(module).__name__} (key prefix {prefix!r}):"]
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if names:
            shown = ", ".join(names[:8]) + (
                f", ... ({len(names)} in all)" if len(names) > 8 else ""
            )
            lines.append(f"  {label} keys: {shown}")
    raise WeightsMismatchError("\n".join(lines))


def save_weights(
    module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write the module's state dict to a safetensors file (loadable by `load_weights`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous() for name, tensor in module.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt", **(metadata or {})})
    partial.replace(path)
    return path
