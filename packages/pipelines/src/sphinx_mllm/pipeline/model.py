"""`SphinxModel`: a visual stack (view splitter, encoders, mixer) and a causal LM. It takes
tensors and returns tensors; its `processor` (`SphinxProcessor`) makes them from conversations
and images, and is the one place that decides where visual tokens go.

```python
inputs = model.processor([conversation], images=[[photo]])
output = model(**inputs)                       # output.loss, output.logits
```

`input_ids` hold one image-token id per visual token at each image's place; `pixel_values` are
the views of each image in [0, 1] (`processor.preprocess(image)`), as `[num_images, V, 3, s, s]`
or a list of `[V_i, 3, s, s]`, in reading order (sample by sample, run by run). With
`normalized=True` they are pixels already normalised with the (single) encoder's statistics, as
Hugging Face processors give them. `logits[:, t]` predicts `labels[:, t + 1]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, PreTrainedModel

from sphinx_mllm.mixer import VisualStack
from sphinx_mllm.mixer.stack import VisualTokens
from sphinx_mllm.pipeline.config import ModelConfig
from sphinx_mllm.pipeline.hf_config import HUB_OPTIONS, SphinxConfig
from sphinx_mllm.pipeline.placement import (
    IGNORE_INDEX,
    PlacedSequence,
    place,
    scatter_visual_tokens,
)
from sphinx_mllm.pipeline.processor import SphinxProcessor

Pixels = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class SphinxOutput:
    """What a forward pass gives. `logits` is None when the caller asked for the loss only."""

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    labels: torch.Tensor | None
    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    past_key_values: Any = None


@dataclass
class EmbeddedInputs:
    """The LLM's inputs once visual tokens are placed."""

    inputs_embeds: torch.Tensor
    sequence: PlacedSequence


class SphinxModel(PreTrainedModel):
    """Visual stack + causal LM, a transformers `PreTrainedModel` whose `config` is a
    `SphinxConfig` (`model.model_config` is the toolkit's `ModelConfig`). Build one with
    `build_model(config)` (or a preset: `build_model("demo")`), load one with
    `SphinxModel.from_pretrained(dir)` or `AutoModel.from_pretrained(dir)`, or pass the parts.
    `processor` is the model's text and image side (None for a model assembled by hand).

    Weights are not initialised by transformers: every component initialises itself (and a
    pretrained encoder or LLM arrives with its weights), so `post_init` is not run."""

    config_class = SphinxConfig
    base_model_prefix = "sphinx"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    def __init__(
        self,
        visual: VisualStack,
        llm: nn.Module,
        *,
        image_token_id: int,
        config: ModelConfig | SphinxConfig | None = None,
        processor: SphinxProcessor | None = None,
    ) -> None:
        if not isinstance(config, SphinxConfig):
            config = SphinxConfig.of(config, image_token_id)
        super().__init__(config)
        llm_width = llm.get_input_embeddings().embedding_dim
        if visual.out_dim != llm_width:
            raise ValueError(
                f"The visual stack gives tokens of width {visual.out_dim}, the LLM embeds width "
                f"{llm_width}; build the mixer with out_dim={llm_width}"
            )
        if processor is not None and processor.image_token_id != image_token_id:
            raise ValueError(
                f"The processor writes image-token id {processor.image_token_id}, the model "
                f"reads {image_token_id}"
            )
        self.visual = visual
        self.llm = llm
        self.image_token_id = image_token_id
        self.config.image_token_id = image_token_id
        self.processor = processor

    @classmethod
    def can_generate(cls) -> bool:
        """`generate` continues prompts with the LLM's own `GenerationMixin.generate`."""
        return True

    @classmethod
    def _from_config(cls, config: SphinxConfig, **options: Any) -> SphinxModel:
        """The model `config` describes, random-initialised (`AutoModel.from_config`)."""
        from sphinx_mllm.pipeline.building import build_model

        if config.model_config is None:
            raise ValueError("This SphinxConfig carries no ModelConfig to build a model from")
        return build_model(config.model_config, **options)

    @property
    def model_config(self) -> ModelConfig | None:
        """The toolkit's description of this model (None when assembled from parts by hand)."""
        return self.config.model_config

    @model_config.setter
    def model_config(self, value: ModelConfig | None) -> None:
        self.config.model_config = value

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.llm.get_output_embeddings()

    # -- what the model declares ---------------------------------------------------------------

    def num_visual_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Visual tokens per image of (width, height) `image_size`, before running anything."""
        return self.visual.num_tokens(image_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.llm.config, "bos_token_id", None)

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (None without a processor)."""
        return None if self.processor is None else self.processor.tokenizer

    # -- forward -------------------------------------------------------------------------------

    def encode_images(self, pixel_values: Pixels, *, normalized: bool = False) -> VisualTokens:
        """Visual tokens (in the LLM's dtype) for the views of each image."""
        if normalized:
            pixel_values = self._denormalize(pixel_values)
        tokens = self.visual(pixel_values)
        tokens.tokens = tokens.tokens.to(self.dtype)
        return tokens

    def _denormalize(self, pixel_values: Pixels) -> Pixels:
        if len(self.visual.streams) != 1:
            raise ValueError(
                "normalized=True needs a single-encoder model (whose statistics normalised the "
                f"pixels); this one has {len(self.visual.streams)}: pass views in [0, 1] instead"
            )
        encoder = next(iter(self.visual.streams.values())).encoder

        def restore(pixels: torch.Tensor) -> torch.Tensor:
            """Views in [0, 1], with a view axis added to HF's `[B, 3, H, W]` / `[3, H, W]`."""
            mean = torch.tensor(encoder.mean, dtype=pixels.dtype, device=pixels.device)
            std = torch.tensor(encoder.std, dtype=pixels.dtype, device=pixels.device)
            views = pixels * std.view(3, 1, 1) + mean.view(3, 1, 1)
            one_view = views.ndim == (4 if isinstance(pixel_values, torch.Tensor) else 3)
            return views.unsqueeze(-4) if one_view else views

        if isinstance(pixel_values, torch.Tensor):
            return restore(pixel_values)
        return [restore(pixels) for pixels in pixel_values]

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: Pixels | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        normalized: bool = False,
        visual_tokens: VisualTokens | None = None,
    ) -> EmbeddedInputs:
        """Overwrite the image positions with the visual tokens: what the LLM receives."""
        if visual_tokens is None and pixel_values is not None:
            visual_tokens = self.encode_images(pixel_values, normalized=normalized)
        lengths = visual_tokens.lengths if visual_tokens is not None else []
        sequence = place(input_ids, attention_mask, labels, self.image_token_id, lengths)
        text_ids = input_ids.masked_fill(sequence.image_mask, 0)
        embeddings = self.llm.get_input_embeddings()(text_ids)
        if visual_tokens is not None:
            embeddings = scatter_visual_tokens(
                embeddings, sequence.image_mask, visual_tokens.tokens, lengths
            )
        return EmbeddedInputs(embeddings, sequence)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: Pixels | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        normalized: bool = False,
        return_logits: bool = True,
    ) -> SphinxOutput:
        """Logits and (when `labels` are given) the mean next-token loss over labelled tokens.
        `return_logits=False` computes the vocabulary projection on labelled positions only
        (what training needs: far less memory on long visual prefixes)."""
        embedded = self.embed_inputs(
            input_ids, pixel_values, attention_mask, labels, normalized=normalized
        )
        sequence = embedded.sequence
        hidden = self.llm.get_decoder()(
            inputs_embeds=embedded.inputs_embeds,
            attention_mask=sequence.attention_mask,
            position_ids=sequence.position_ids,
            use_cache=False,
        ).last_hidden_state
        head = self.llm.get_output_embeddings()
        if return_logits:
            logits = head(hidden)
            loss = None if sequence.labels is None else next_token_loss(logits, sequence.labels)
        else:
            if sequence.labels is None:
                raise ValueError("return_logits=False computes the loss only: pass labels")
            logits, loss = None, labelled_loss(hidden, head, sequence.labels)
        return SphinxOutput(
            loss=loss,
            logits=logits,
            labels=sequence.labels,
            attention_mask=sequence.attention_mask,
            image_mask=sequence.image_mask,
        )

    # -- persistence and generation (defined in their own modules) -----------------------------

    def save_pretrained(self, directory: Any, **options: Any) -> Any:
        from sphinx_mllm.pipeline.checkpoint import save_pretrained

        return save_pretrained(self, directory, **options)

    @classmethod
    def from_pretrained(cls, directory: Any, **options: Any) -> SphinxModel:
        """A checkpoint directory's model (`checkpoint.load_pretrained`: `device`, `dtype`,
        `components`). The hub options transformers' Auto classes pass along are taken, and
        have nothing to do for a local directory (`subfolder` is followed)."""
        from pathlib import Path

        from sphinx_mllm.pipeline.checkpoint import load_pretrained

        hub = {key: options.pop(key) for key in list(options) if key in HUB_OPTIONS}
        if "torch_dtype" in options:  # transformers' former name
            options.setdefault("dtype", options.pop("torch_dtype"))
        return load_pretrained(Path(directory) / (hub.get("subfolder") or ""), **options)

    @classmethod
    def from_llava(cls, path: Any, **options: Any) -> SphinxModel:
        """Import a Hugging Face `LlavaForConditionalGeneration` checkpoint directory."""
        from sphinx_mllm.pipeline.llava_import import from_llava

        return from_llava(path, **options)

    @classmethod
    def from_accessory(cls, path: Any, **options: Any) -> SphinxModel:
        """Import a LLaMA2-Accessory SPHINX release directory (`consolidated.*.model.pth`,
        config.json, meta.json, tokenizer.model); see `accessory.conversion.from_accessory`."""
        from sphinx_mllm.pipeline.accessory import from_accessory

        return from_accessory(path, **options)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: Pixels | None = None, **options: Any):
        """Greedy or sampled continuation with a KV cache; see `generation.generate`."""
        from sphinx_mllm.pipeline.generation import generate

        return generate(self, input_ids, pixel_values, **options)

    @classmethod
    def from_config(cls, config: ModelConfig | SphinxConfig | str, **options: Any) -> SphinxModel:
        from sphinx_mllm.pipeline.building import build_model

        if isinstance(config, SphinxConfig):
            return cls._from_config(config, **options)
        return build_model(config, **options)


def register_auto_classes() -> None:
    """Let transformers' Auto classes read `sphinx` checkpoints (done on importing this module):
    `AutoConfig`, `AutoModel` and `AutoModelForImageTextToText` give `SphinxConfig` and
    `SphinxModel`, `AutoProcessor` the `SphinxProcessor`."""
    from transformers import AutoProcessor
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if SphinxConfig.model_type in CONFIG_MAPPING:
        return
    AutoConfig.register(SphinxConfig.model_type, SphinxConfig)
    AutoModel.register(SphinxConfig, SphinxModel)
    AutoModelForImageTextToText.register(SphinxConfig, SphinxModel)
    AutoProcessor.register(SphinxConfig, SphinxProcessor)


register_auto_classes()


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `logits[:, t]` against `labels[:, t + 1]` over labelled tokens,
    in fp32; 0 (still differentiable) when no token is labelled. The labels are shifted, not the
    logits: slicing the logits would copy the whole tensor (and fill two more in backward)."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    keep = shifted != IGNORE_INDEX
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1])[keep].float(), shifted[keep])


def labelled_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """`next_token_loss` with the vocabulary projection run on the labelled positions only."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    states = hidden[:, :-1][keep]
    if states.shape[0] == 0:
        return hidden.sum() * 0.0
    return F.cross_entropy(head(states).float(), shifted[keep])
