"""Building open_clip vision towers for the open_clip adapters: the tower alone (no text tower),
directly on the requested device and dtype, with weights from a local path or an open_clip
pretrained tag (fetched from the network or the local cache)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from sphinx_mllm.encoders.base import VisualEncoder
from sphinx_mllm.encoders.building import Pretrained, building_on, finish, resolve_pretrained

ModelConfig = str | dict[str, Any]


def create_open_clip_encoder(
    adapter: type[VisualEncoder],
    name: str,
    model_config: ModelConfig,
    pretrained: Pretrained = None,
    *,
    default_source: str | None = None,
    quick_gelu: bool = False,
    vision_cfg: Mapping[str, Any] | None = None,
    embed_dim: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    frozen: bool = True,
    **options: Any,
) -> VisualEncoder:
    """Build the vision tower of an open_clip config (a registered name such as `ViT-L-14`, or
    a dict with `embed_dim` and `vision_cfg`) and wrap it in `adapter`, which checks the tower
    is of its kind. `quick_gelu` applies to open_clip's own ViTs (timm towers ignore it).
    `vision_cfg` overrides fields of the config's `vision_cfg` (`{"width": 128, "layers": 2}`:
    a scaled-down tower of the same family, as a converted checkpoint may hold), `embed_dim`
    the width of its output projection."""
    import open_clip
    from open_clip.model import (
        CLIPVisionCfg,
        _build_vision_tower,  # the vision tower alone, no text tower
    )

    config = (
        open_clip.get_model_config(model_config) if isinstance(model_config, str) else model_config
    )
    if config is None:
        raise ValueError(f"{name}: open_clip has no model config {model_config!r}")
    if vision_cfg:
        unknown = sorted(set(vision_cfg) - {f.name for f in fields(CLIPVisionCfg)})
        if unknown:
            raise ValueError(f"{name}: unknown vision_cfg field(s) {unknown} for open_clip")
        config = {**config, "vision_cfg": {**config["vision_cfg"], **vision_cfg}}
    if embed_dim is not None:
        config = {**config, "embed_dim": embed_dim}
    source = resolve_pretrained(pretrained, default_source)
    with building_on(device, dtype):
        visual = _build_vision_tower(
            config["embed_dim"], config["vision_cfg"], quick_gelu=quick_gelu
        )
    encoder = adapter(visual, name=name, **options)
    if source.library_source is not None:
        encoder.load_weights(fetch_open_clip_checkpoint(name, model_config, source.library_source))
    return finish(encoder, source, frozen=frozen)


def fetch_open_clip_checkpoint(name: str, model_config: ModelConfig, tag: str) -> Path:
    """The local file of open_clip's weights `tag` for the registered config `model_config`."""
    import open_clip

    if not isinstance(model_config, str):
        raise ValueError(
            f"{name}: a custom config has no open_clip pretrained tags; pass a local path"
        )
    config = open_clip.get_pretrained_cfg(model_config, tag)
    if not config:
        known = open_clip.list_pretrained_tags_by_model(model_config)
        raise ValueError(
            f"{name}: open_clip has no pretrained tag {tag!r} for {model_config}; known: {known}"
        )
    try:
        return Path(open_clip.download_pretrained(config))
    except Exception as error:
        raise RuntimeError(
            f"{name}: could not fetch open_clip weights {model_config}/{tag} (no network and no "
            f"local cache?): {error}. Pass pretrained=<local file or directory> instead."
        ) from error
