"""The BLIP-2 Q-Former as a visual encoder: the BLIP-2 vision model (EVA ViT-g/14) followed by the
Q-Former, from `transformers`, returning its query tokens.

SPHINX (llama_ens.py) takes `Blip2Model.get_qformer_features(...).last_hidden_state` of
`Salesforce/blip2-opt-2.7b`, 32 query tokens x 768, with the language parts dropped. The module
holds `vision_model`, `query_tokens` and `qformer` under the names `Blip2Model` uses, so a whole
BLIP-2 checkpoint loads with its `language_*` tensors skipped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sphinx_mllm.encoders.base import VisualEncoder
from sphinx_mllm.encoders.building import Pretrained, building_on, finish, resolve_pretrained
from sphinx_mllm.encoders.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Size


class Blip2QFormerParts(nn.Module):
    """The vision model, learned queries and Q-Former of a BLIP-2 model."""

    def __init__(self, config: Any) -> None:
        from transformers import Blip2QFormerModel, Blip2VisionModel

        super().__init__()
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(
            torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size)
        )
        self.qformer = Blip2QFormerModel(config.qformer_config)


class Blip2QFormerEncoder(VisualEncoder):
    """Query tokens `[B, num_query_tokens, qformer_hidden]` of a BLIP-2 Q-Former."""

    ignored_checkpoint_prefixes = ("language_model.", "language_projection.")

    def __init__(self, parts: Blip2QFormerParts, *, name: str) -> None:
        vision = parts.vision_model.config
        super().__init__(
            name=name,
            input_size=vision.image_size,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            embed_dim=parts.qformer.config.hidden_size,
            leading_token=False,
            num_queries=parts.query_tokens.shape[1],
        )
        self.model = parts

    def grid_size(self, image_size: Size | None = None) -> None:
        self._require_size(self._size(image_size), self.input_size)
        return None

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        image_embeds = self.model.vision_model(pixel_values=pixels).last_hidden_state
        queries = self.model.query_tokens.expand(image_embeds.shape[0], -1, -1)
        # No encoder mask: every image token is attended, as with get_qformer_features' all-ones
        # mask, which transformers would inspect with .all() (impossible on the meta device).
        return self.model.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds
        ).last_hidden_state


def create_blip2_qformer(
    name: str,
    config: Any = None,
    pretrained: Pretrained = None,
    *,
    default_source: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    frozen: bool = True,
) -> Blip2QFormerEncoder:
    """Build the Q-Former parts of a `Blip2Config` (default: the blip2-opt-2.7b shapes). A
    Hugging Face id as `pretrained` reads its config and weights from the hub or its cache."""
    from transformers import Blip2Config

    source = resolve_pretrained(pretrained, default_source)
    checkpoint = None
    if source.library_source is not None:
        checkpoint = _fetch_hub_checkpoint(name, source.library_source)
        config = Blip2Config.from_pretrained(checkpoint)
    config = Blip2Config() if config is None else config
    with building_on(device, dtype):
        encoder = Blip2QFormerEncoder(Blip2QFormerParts(config), name=name)
    if checkpoint is not None:
        encoder.load_weights(checkpoint)
    return finish(encoder, source, frozen=frozen)


def _fetch_hub_checkpoint(name: str, repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"])
    except Exception as error:
        raise RuntimeError(
            f"{name}: could not fetch {repo_id!r} from the Hugging Face hub or its local cache: "
            f"{error}. Pass pretrained=<local file or directory> instead."
        ) from error


# -- registered presets (entry-point group sphinx_mllm_encoders) ----------------------------------


def blip2_qformer_opt2_7b(
    pretrained: Pretrained = None, *, config: dict[str, Any] | None = None, **overrides: Any
) -> Blip2QFormerEncoder:
    """BLIP-2 EVA ViT-g/14 (1408 wide, 39 layers) + Q-Former as SPHINX uses it: 32 queries x 768.
    `config` overrides fields of its `Blip2Config` (`{"vision_config": {"hidden_size": 176}}`:
    a scaled-down model of the same shape family, as a converted checkpoint may hold)."""
    return create_blip2_qformer(
        "blip2_qformer_opt2_7b",
        None if config is None else _blip2_config(config),
        pretrained,
        default_source="Salesforce/blip2-opt-2.7b",
        **overrides,
    )


def _blip2_config(overrides: dict[str, Any]) -> Any:
    """The default `Blip2Config` (blip2-opt-2.7b) with `overrides`, sub-configs merged by field."""
    from transformers import Blip2Config

    defaults = Blip2Config().to_dict()
    merged = dict(defaults)
    for key, value in overrides.items():
        if key not in defaults:
            raise ValueError(f"blip2_qformer: unknown Blip2Config field {key!r}")
        merged[key] = {**defaults[key], **value} if isinstance(value, dict) else value
    return Blip2Config(**merged)


TINY_BLIP2_CONFIG = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
    "qformer_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "encoder_hidden_size": 32,
    },
    # Only Blip2Model needs a language model; the tiny OPT keeps the reference in tests small.
    "text_config": {
        "model_type": "opt",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "ffn_dim": 32,
        "num_attention_heads": 2,
        "vocab_size": 64,
        "word_embed_proj_dim": 16,
    },
    "num_query_tokens": 4,
}


def tiny_blip2_qformer(pretrained: Pretrained = None, **overrides: Any) -> Blip2QFormerEncoder:
    """A random-initialised BLIP-2 vision model + Q-Former (32 px, width 32, 4 queries)."""
    from transformers import Blip2Config

    config = Blip2Config(**TINY_BLIP2_CONFIG)
    return create_blip2_qformer("tiny_blip2_qformer", config, pretrained, **overrides)
