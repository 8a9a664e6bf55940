"""Export a `SphinxModel` as a Hugging Face LLaVA checkpoint (`LlavaForConditionalGeneration`),
for the models that class can express: one transformers vision tower (CLIP or SigLIP) read at its
feature layer(s), LLaVA's projector (`mlp2x_gelu`) in a `sequence_concat` mixer without view
tokens, one view per image at the tower's own size, and a causal LM that transformers rebuilds
from its config. Anything else is refused with `LlavaExportError`, naming the part LLaVA cannot
express.

```python
to_llava(SphinxModel.from_pretrained("my-llava"), "my-llava-hf")   # sphinx-pipeline export-llava
LlavaForConditionalGeneration.from_pretrained("my-llava-hf")        # the same logits
```

The output holds `config.json` (a `LlavaConfig`), the weights under the names
`LlavaForConditionalGeneration` gives them (sharded with an index when large) and the tokenizer.
Pixel values for it are the model's square view normalised with the tower's statistics
(`processor.preprocess`, then the encoder's mean and std); the image processor is not written,
since Hugging Face's LLaVA processor crops where this toolkit pads.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sphinx_mllm.core.outputs import AtomicOutputDirectory
from sphinx_mllm.encoders.hf_vision import HFVisionEncoder
from sphinx_mllm.mixer.sequence_concat import SequenceConcatMixer
from sphinx_mllm.pipeline.checkpoint import (
    DEFAULT_SHARD_BYTES,
    config_to_save,
    weight_problems,
    write_weights,
)
from sphinx_mllm.pipeline.model import SphinxModel

WRITER = "sphinx-pipeline export-llava"  # the marker an earlier export must carry to be replaced


class LlavaExportError(ValueError):
    """A model that Hugging Face's LLaVA cannot express: names the part."""


def to_llava(
    model: SphinxModel,
    out: str | Path,
    *,
    overwrite: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Write `model` as a LLaVA checkpoint directory `out` (atomically; an existing `out` is
    replaced only with `overwrite`, only if an earlier export wrote it and it holds none of
    `inputs`)."""
    from transformers import LlavaForConditionalGeneration

    config = llava_config(model)
    with torch.device("meta"):
        expected = LlavaForConditionalGeneration(config).state_dict()
    tensors = _llava_tensors(model, expected, config)
    output = AtomicOutputDirectory(out, writer=WRITER, force=overwrite, inputs=inputs)
    try:
        config.save_pretrained(output.path)
        write_weights(output.path, tensors, shard_bytes, {"format": "pt"})
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(output.path)
        return output.commit()
    except BaseException:
        output.abort()
        raise


def llava_config(model: SphinxModel) -> Any:
    """The `LlavaConfig` of `model`, or `LlavaExportError` naming what LLaVA cannot express."""
    from transformers import LlavaConfig

    encoder = _vision_tower(model)
    _check_mixer(model, encoder)
    text_config = copy.deepcopy(_language_model(model).config)
    spec = model.model_config.vision.encoders[0] if model.model_config is not None else None
    layer = spec.options.get("feature_layer") if spec is not None else None
    if layer is None:  # as the encoder holds it: an index of its hidden states
        states = encoder.model.config.num_hidden_layers + 1
        layers = [index - states for index in encoder.layers]
        layer = layers[0] if len(layers) == 1 else layers
    return LlavaConfig(
        vision_config=copy.deepcopy(encoder.model.config),
        text_config=text_config,
        image_token_id=model.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full" if encoder.leading_token else "default",
        vision_feature_layer=layer,
        image_seq_length=model.num_visual_tokens(),
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )


def _vision_tower(model: SphinxModel) -> HFVisionEncoder:
    encoders = model.visual.encoders
    if len(encoders) != 1:
        names = ", ".join(f"{name} ({type(e).__name__})" for name, e in encoders.items())
        raise LlavaExportError(
            f"Hugging Face LLaVA has one vision tower; this model mixes {len(encoders)} "
            f"encoders: {names}"
        )
    (name, encoder), *_ = encoders.items()
    if not isinstance(encoder, HFVisionEncoder):
        raise LlavaExportError(
            f"Hugging Face LLaVA's vision tower is a transformers vision model (hf_vision); "
            f"this model's encoder {name!r} is a {type(encoder).__name__}"
        )
    if encoder.final_norm:
        raise LlavaExportError(
            f"The encoder {name!r} applies the tower's final norm to its features; Hugging Face "
            "LLaVA reads the hidden states without it"
        )
    stream = model.visual.streams[name]
    splitter = model.visual.splitter
    if splitter.fixed_views != 1:
        raise LlavaExportError(
            f"Hugging Face LLaVA takes one view per image; this model's view splitter "
            f"{type(splitter).__name__} gives {splitter.fixed_views or 'a varying number of'} "
            "views (LLaVA-NeXT's class takes tiles)"
        )
    tower_size = encoder.model.config.image_size
    if stream.size != (tower_size, tower_size) or splitter.base_size != tower_size:
        raise LlavaExportError(
            f"Hugging Face LLaVA feeds the tower images of its own size {tower_size}; this model "
            f"splits images to {splitter.base_size} px and resizes them to {stream.size}"
        )
    return encoder


def _check_mixer(model: SphinxModel, encoder: HFVisionEncoder) -> None:
    mixer = model.visual.mixer
    if not isinstance(mixer, SequenceConcatMixer):
        raise LlavaExportError(
            f"Hugging Face LLaVA projects the tower's tokens with one MLP; this model's mixer is "
            f"a {type(mixer).__name__} (sequence_concat with mlp2x_gelu is what LLaVA expresses)"
        )
    (projector,) = mixer.projectors.values()
    layers = getattr(projector, "layers", None)
    if not (
        isinstance(layers, nn.Sequential)
        and len(layers) == 3
        and isinstance(layers[0], nn.Linear)
        and isinstance(layers[1], nn.GELU)
        and layers[1].approximate == "none"
        and isinstance(layers[2], nn.Linear)
        and layers[0].bias is not None
        and layers[2].bias is not None
    ):
        raise LlavaExportError(
            f"Hugging Face LLaVA's projector is Linear, GELU, Linear with biases (mlp2x_gelu); "
            f"this model's is {getattr(projector, 'name', type(projector).__name__)!r}"
        )
    extra = sorted(name for name in mixer.state_dict() if not name.startswith("projectors."))
    grid = encoder.grid_size()
    plain = grid[0] * grid[1] + int(encoder.leading_token)
    if extra or model.num_visual_tokens() != plain:
        what = ", ".join(extra) if extra else f"{model.num_visual_tokens()} tokens for {plain}"
        raise LlavaExportError(
            f"Hugging Face LLaVA passes the projected tokens as they are; this model's mixer adds "
            f"view tokens or separators ({what})"
        )


def _language_model(model: SphinxModel) -> nn.Module:
    try:
        config_to_save(model)  # the LLM must be one transformers rebuilds from its config
    except ValueError as error:
        raise LlavaExportError(f"Hugging Face LLaVA's language model: {error}") from error
    llm = model.llm
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


# our tensor name prefix -> LlavaForConditionalGeneration's
_RENAMES = (
    ("llm.model.", "model.language_model."),
    ("llm.lm_head.", "lm_head."),
    ("visual.mixer.projectors.{tower}.layers.0.", "model.multi_modal_projector.linear_1."),
    ("visual.mixer.projectors.{tower}.layers.2.", "model.multi_modal_projector.linear_2."),
    ("visual.encoders.{tower}.model.", "model.vision_tower."),
)


def _llava_tensors(
    model: SphinxModel, expected: dict[str, torch.Tensor], config: Any
) -> dict[str, torch.Tensor]:
    """Our tensors under LLaVA's names; every LLaVA tensor filled (a tied head once), nothing
    left over, every shape equal, or one error listing all problems."""
    tower = next(iter(model.visual.encoders))
    renames = [(ours.format(tower=tower), theirs) for ours, theirs in _RENAMES]
    state = model.state_dict()
    if hasattr(model.llm, "get_base_model"):
        raise LlavaExportError(
            "The LLM carries LoRA adapters; merge them first (peft's merge_and_unload)"
        )
    ours_tied = _tied_parameters(model)
    tied_head = "lm_head.weight" if config.tie_word_embeddings else None
    tensors: dict[str, torch.Tensor] = {}
    unexpected, shapes = [], []
    for name, tensor in state.items():
        if name in ours_tied:
            continue
        target = next(
            (theirs + name[len(ours) :] for ours, theirs in renames if name.startswith(ours)), None
        )
        if target is None or target not in expected:
            unexpected.append(name if target is None else f"{name} (as {target})")
            continue
        if tuple(expected[target].shape) != tuple(tensor.shape):
            shapes.append(f"{name}: {tuple(tensor.shape)}, LLaVA {tuple(expected[target].shape)}")
        tensors[target] = tensor
    missing = [name for name in expected if name not in tensors and name != tied_head]
    problems = weight_problems(missing, unexpected, shapes=shapes)
    if problems:
        raise LlavaExportError(
            "The model's tensors do not fill LlavaForConditionalGeneration:\n" + "\n".join(problems)
        )
    return tensors


def _tied_parameters(model: nn.Module) -> set[str]:
    """The names of parameters that are another name's parameter (a tied LM head), found by
    identity, which holds on the meta device too."""
    seen: set[int] = set()
    tied = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.add(id(parameter))
    return tied
