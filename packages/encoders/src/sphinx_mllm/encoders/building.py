"""How every encoder factory builds: directly on the requested device in the requested dtype (no
fp32 copy first), then weights from a local path or the wrapped library, then frozen."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from sphinx_mllm.encoders.base import VisualEncoder

Pretrained = str | Path | bool | None
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@contextmanager
def building_on(device: torch.device | str | None, dtype: torch.dtype | None) -> Iterator[None]:
    """Modules created inside get their tensors on `device` in `dtype` from the start."""
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"An encoder's dtype must be a floating-point dtype, got {dtype}")
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device is not None else nullcontext():
            yield
    finally:
        torch.set_default_dtype(previous)


@dataclass(frozen=True)
class WeightsSource:
    """Where `pretrained` points: a local path, a source of the wrapped library, or nothing."""

    local_path: Path | None = None
    library_source: str | None = None


def resolve_pretrained(pretrained: Pretrained, default_source: str | None) -> WeightsSource:
    """`None`/`False`: random initialisation; `True`: the preset's default library source; an
    existing file or directory: local weights; any other string: a library source (an open_clip
    tag, a timm tag, a Hugging Face id)."""
    if pretrained is None or pretrained is False:
        return WeightsSource()
    if pretrained is True:
        if default_source is None:
            raise ValueError("This encoder has no default pretrained source; pass a tag or a path")
        return WeightsSource(library_source=default_source)
    path = Path(pretrained).expanduser()
    if path.exists():
        return WeightsSource(local_path=path)
    if isinstance(pretrained, Path) or str(pretrained).endswith(WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"No weights file or directory at {path}")
    return WeightsSource(library_source=str(pretrained))


def finish(encoder: VisualEncoder, source: WeightsSource, *, frozen: bool) -> VisualEncoder:
    """Load local weights (library sources are loaded by the family's factory) and freeze."""
    if source.local_path is not None:
        encoder.load_weights(source.local_path)
    return encoder.freeze() if frozen else encoder.unfreeze()
