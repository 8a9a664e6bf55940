"""Import a Hugging Face LLaVA checkpoint (`LlavaForConditionalGeneration`: a directory with
config.json and safetensors) as a `SphinxModel` built from the toolkit's own components.

```python
model = from_llava("llava-1.5-7b-hf", dtype="float16")   # or SphinxModel.from_llava(...)
model.save_pretrained("llava-1.5-7b")                     # config.json + model.safetensors
```

The vision tower becomes an `hf_vision` encoder (same feature layer(s), CLS kept or dropped as
`vision_feature_select_strategy` says), the projector an `mlp2x_gelu` inside a `sequence_concat`
mixer, the language model and its head a causal LM described by its whole transformers config;
visual tokens go at the image-token placeholders, as in LLaVA. The model is built from the
`ModelConfig` the import writes (the same path `load_pretrained` takes), then every checkpoint
tensor is mapped onto exactly one of its tensors: anything left over or missing is an error.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaConfig, PreTrainedConfig

from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.encoders.hf_vision import FAMILIES
from sphinx_mllm.llm.backbones import SUPPORTED_FAMILIES
from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.mixer.views import OPENAI_CLIP_FILL
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.checkpoint import PROVENANCE_FIELDS, tied_aliases, weight_problems
from sphinx_mllm.pipeline.config import (
    DTYPES,
    EncoderSpec,
    LLMConfig,
    ModelConfig,
    TokenizerConfig,
    VisionConfig,
)
from sphinx_mllm.pipeline.model import SphinxModel

ENCODER = "hf_vision"  # the registry name, which is also the stream's name in the visual stack
PROJECTORS = {"gelu": "mlp2x_gelu"}  # LLaVA projector_hidden_act -> our projector
KEEP_CLS = {"default": False, "full": True}  # vision_feature_select_strategy -> keep_cls
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class LlavaImportError(ValueError):
    """A LLaVA checkpoint that cannot be imported: names the file, field or tensor."""


def from_llava(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> SphinxModel:
    """The `SphinxModel` equal to the LLaVA checkpoint directory `path`, in eval mode.
    `dtype`: float32, bfloat16 or float16 (default: the checkpoint's). Only safetensors are read."""
    directory = Path(path).expanduser()
    llava = read_llava_config(directory)
    try:
        checkpoint = ModelCheckpoint(directory)
    except (CheckpointError, FileNotFoundError) as error:
        pickles = sorted(file.name for file in directory.glob("*.bin"))
        hint = f" ({pickles}: PyTorch pickles are never read; convert them to safetensors)"
        raise LlavaImportError(
            f"{directory}: cannot read the LLaVA weights: {error}{hint if pickles else ''}"
        ) from error
    with checkpoint:
        dtype_name = _dtype_name(dtype, checkpoint)
        tokenizer = _load_tokenizer(directory)
        config = llava_model_config(llava, directory, dtype=dtype_name, tokenizer=tokenizer)
        components = {"tokenizer": tokenizer} if tokenizer is not None else None
        model = build_model(config, device=device, components=components)
        tower = model.visual.encoders[ENCODER].model
        _check_rebuilt("vision tower", tower.config, llava.vision_config, directory)
        _check_rebuilt("language model", model.llm.config, llava.text_config, directory)
        load_llava_weights(model, checkpoint)
    return model.eval()


# -- the config ----------------------------------------------------------------------------------


def read_llava_config(directory: Path) -> LlavaConfig:
    """The `LlavaConfig` of a checkpoint directory; anything else is refused by name."""
    config_file = directory / "config.json"
    if not directory.is_dir():
        raise FileNotFoundError(f"No LLaVA checkpoint directory at {directory}")
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No config.json in {directory}: not a Hugging Face model directory"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as error:
        raise LlavaImportError(f"{config_file} is not a JSON object: {error}") from error
    if model_type != "llava":
        hint = (
            " (the original LLaVA repository's format: convert it with transformers' "
            "convert_llava_weights_to_hf.py first)"
            if model_type == "llava_llama"
            else ""
        )
        raise LlavaImportError(
            f"{config_file} describes a {model_type!r} model, not LLaVA "
            f"(LlavaForConditionalGeneration, model_type 'llava'){hint}"
        )
    return LlavaConfig.from_pretrained(directory)


def llava_model_config(
    llava: LlavaConfig,
    directory: Path,
    *,
    dtype: str = "float32",
    tokenizer: Any = None,
) -> ModelConfig:
    """The `ModelConfig` describing the LLaVA model of `llava` (read from `directory`)."""
    vision = llava.vision_config
    encoder_options, fill = _encoder_options(llava, directory)
    return ModelConfig(
        vision=VisionConfig(
            encoders=[EncoderSpec(ENCODER, options=encoder_options)],
            splitter="single",
            splitter_options={"base_size": vision.image_size, **fill},
            mixer="sequence_concat",
            mixer_options={"projector": _projector(llava, directory)},
        ),
        llm=_llm_config(llava, directory),
        tokenizer=_tokenizer_config(llava, directory, tokenizer),
        template="vicuna_v1",
        placement="placeholder",
        dtype=dtype,
        name=directory.resolve().name,
    )


def _encoder_options(llava: LlavaConfig, directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`hf_vision` options for the tower, and the splitter's pad colour when it is not CLIP's."""
    vision = llava.vision_config
    where = f"{directory / 'config.json'}: vision_config"
    if vision.model_type not in FAMILIES:
        raise LlavaImportError(
            f"{where} is a {vision.model_type!r} model; hf_vision wraps {sorted(FAMILIES)}"
        )
    strategy = llava.vision_feature_select_strategy
    if strategy not in KEEP_CLS:
        raise LlavaImportError(
            f"{directory / 'config.json'}: vision_feature_select_strategy {strategy!r} is not "
            f"one of {sorted(KEEP_CLS)}"
        )
    if strategy == "default" and not FAMILIES[vision.model_type].has_cls:
        # LLaVA's "default" drops the first token whatever it is; without a CLS token that is a
        # patch, which hf_vision never drops.
        raise LlavaImportError(
            f"{where} is a {vision.model_type!r} tower, which has no CLS token: "
            "vision_feature_select_strategy 'default' would drop its first patch token, which "
            "hf_vision cannot represent (only 'full' is supported for it)"
        )
    layer = llava.vision_feature_layer
    options: dict[str, Any] = {
        "config": _config_dict(vision),
        "feature_layer": layer if isinstance(layer, int) else list(layer),
        "keep_cls": KEEP_CLS[strategy],
    }
    fill: dict[str, Any] = {}
    stats = _processor_stats(directory)
    family = FAMILIES[vision.model_type]
    if stats is not None and stats != (tuple(family.mean), tuple(family.std)):
        options["mean"], options["std"] = list(stats[0]), list(stats[1])
    mean = stats[0] if stats is not None else family.mean
    padding = tuple(int(255 * value) for value in mean)
    if padding != OPENAI_CLIP_FILL:  # LLaVA pads images to a square with the processor's mean
        fill["fill"] = list(padding)
    return options, fill


def _processor_stats(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The image processor's normalisation (image_mean, image_std), when the directory has one."""
    for name in PROCESSOR_FILES:
        file = directory / name
        if not file.is_file():
            continue
        settings = json.loads(file.read_text())
        settings = settings.get("image_processor", settings)
        if "image_mean" in settings and "image_std" in settings:
            return tuple(settings["image_mean"]), tuple(settings["image_std"])
    return None


def _projector(llava: LlavaConfig, directory: Path) -> str:
    where = directory / "config.json"
    if llava.projector_hidden_act not in PROJECTORS:
        raise LlavaImportError(
            f"{where}: projector_hidden_act {llava.projector_hidden_act!r} has no projector "
            f"here; supported: {sorted(PROJECTORS)} (mlp2x_gelu: Linear, exact GELU, Linear)"
        )
    if not getattr(llava, "multimodal_projector_bias", True):
        raise LlavaImportError(
            f"{where}: multimodal_projector_bias is false, but mlp2x_gelu's Linear layers have "
            "biases"
        )
    return PROJECTORS[llava.projector_hidden_act]


def _llm_config(llava: LlavaConfig, directory: Path) -> LLMConfig:
    """The text model as its whole transformers config, random-initialised then loaded."""
    text = llava.text_config
    if text.model_type not in SUPPORTED_FAMILIES:
        raise LlavaImportError(
            f"{directory / 'config.json'}: text_config is a {text.model_type!r} model; supported "
            f"language models: {', '.join(SUPPORTED_FAMILIES)}"
        )
    settings = _config_dict(text)
    if llava.tie_word_embeddings:  # LLaVA ties the head when either config says so
        settings["tie_word_embeddings"] = True
    label = getattr(text, "_name_or_path", "") or text.model_type
    return LLMConfig(label, config=settings, pretrained=False)


def _config_dict(config: PreTrainedConfig) -> dict[str, Any]:
    """What a transformers config sets apart from its class defaults, with its model_type."""
    settings = config.to_diff_dict()
    for key in PROVENANCE_FIELDS:
        settings.pop(key, None)
    return {**settings, "model_type": config.model_type}


def _tokenizer_config(llava: LlavaConfig, directory: Path, tokenizer: Any) -> TokenizerConfig:
    image_token_id = int(llava.image_token_id)
    if tokenizer is None:
        return TokenizerConfig(source="llm", image_token_id=image_token_id)
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    return TokenizerConfig(
        source=str(directory.resolve()),
        image_token=image_token if isinstance(image_token, str) else "<image>",
        image_token_id=image_token_id,
        pad_token=tokenizer.pad_token,
    )


def _load_tokenizer(directory: Path) -> Any:
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def _dtype_name(dtype: torch.dtype | str | None, checkpoint: ModelCheckpoint) -> str:
    """`dtype` as a config dtype name; by default the dtype most of the checkpoint is stored in."""
    if dtype is None:
        stored = Counter(
            checkpoint.dtype(name)
            for name in checkpoint.names()
            if checkpoint.dtype(name).is_floating_point
        )
        dtype = stored.most_common(1)[0][0] if stored else torch.float32
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise LlavaImportError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def _check_rebuilt(
    what: str, built: PreTrainedConfig, expected: PreTrainedConfig, directory: Path
) -> None:
    """A component built from the recorded config must be the checkpoint's: a config field the
    recorded settings lost would otherwise change the model silently."""
    wanted, actual = expected.to_dict(), built.to_dict()
    differing = sorted(
        key
        for key in wanted
        if key not in (*PROVENANCE_FIELDS, "tie_word_embeddings") and actual.get(key) != wanted[key]
    )
    if differing:
        details = ", ".join(f"{key}: {actual.get(key)!r} != {wanted[key]!r}" for key in differing)
        raise LlavaImportError(
            f"{directory / 'config.json'}: the {what} rebuilt from its config differs in {details}"
        )


# -- the weights ---------------------------------------------------------------------------------

# Checkpoint name prefix -> SphinxModel name prefix. LLaVA checkpoints come in the layout of
# transformers < 4.52 (`language_model.model.`, also what transformers 5 writes) or of 4.52+
# (`model.language_model.`); both are read.
_PROJECTOR = f"visual.mixer.projectors.{ENCODER}.layers."
_TOWER = f"visual.encoders.{ENCODER}.model."
PREFIXES = (
    ("model.language_model.", "llm.model."),
    ("language_model.model.", "llm.model."),
    ("language_model.lm_head.", "llm.lm_head."),
    ("lm_head.", "llm.lm_head."),
    ("model.multi_modal_projector.linear_1.", f"{_PROJECTOR}0."),
    ("model.multi_modal_projector.linear_2.", f"{_PROJECTOR}2."),
    ("multi_modal_projector.linear_1.", f"{_PROJECTOR}0."),
    ("multi_modal_projector.linear_2.", f"{_PROJECTOR}2."),
    ("model.vision_tower.", _TOWER),
    ("vision_tower.", _TOWER),
)
# Buffers that older transformers saved and now rebuild (HF skips them on loading too).
DERIVED_BUFFERS = ("embeddings.position_ids", "rotary_emb.inv_freq")


def model_name(checkpoint_name: str, model_names: set[str]) -> str | None:
    """The SphinxModel tensor a LLaVA checkpoint tensor loads into (None: no such tensor).
    Vision towers are stored with or without `vision_model.` (CLIPVisionModel's inner module,
    flattened in transformers 5); the model's own layout decides."""
    for source, target in PREFIXES:
        if not checkpoint_name.startswith(source):
            continue
        name = target + checkpoint_name[len(source) :]
        if target != _TOWER or name in model_names:
            return name
        rest = checkpoint_name[len(source) :]
        for variant in (rest.removeprefix("vision_model."), f"vision_model.{rest}"):
            if _TOWER + variant in model_names:
                return _TOWER + variant
        return name
    return None


def load_llava_weights(model: SphinxModel, checkpoint: ModelCheckpoint) -> None:
    """Copy every tensor of `checkpoint` into `model`; each checkpoint tensor must fill exactly
    one model tensor and every model tensor must be filled, else one error lists all problems."""
    state = model.state_dict()
    aliases = tied_aliases(state)
    plan: dict[str, str] = {}  # model name -> checkpoint name
    unexpected, duplicated, shapes = [], [], []
    for stored in checkpoint.names():
        target = model_name(stored, set(state))
        if target is None or target not in state:
            if not stored.endswith(DERIVED_BUFFERS):
                unexpected.append(stored if target is None else f"{stored} (as {target})")
            continue
        target = aliases.get(target, target)
        if target in plan:
            duplicated.append(f"{stored} and {plan[target]} both load {target}")
            continue
        plan[target] = stored
        if checkpoint.shape(stored) != tuple(state[target].shape):
            shapes.append(
                f"{stored}: checkpoint {checkpoint.shape(stored)}, model "
                f"{tuple(state[target].shape)} ({target})"
            )
    missing = sorted(name for name in state if name not in aliases and name not in plan)
    problems = weight_problems(missing, unexpected, duplicated=duplicated, shapes=shapes)
    if problems:
        raise LlavaImportError(
            f"The weights in {checkpoint.directory} do not fit the LLaVA model its config.json "
            "describes:\n" + "\n".join(problems)
        )
    with torch.no_grad():
        for target, stored in plan.items():
            state[target].copy_(checkpoint.get(stored))
