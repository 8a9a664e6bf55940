"""Self-describing model checkpoints in the Hugging Face layout: `save_pretrained(model, dir)` /
`load_pretrained(dir)` (`SphinxModel.save_pretrained` / `from_pretrained`, and transformers'
`AutoModel.from_pretrained` once `sphinx_mllm.pipeline.model` is imported).

A checkpoint directory holds

- `config.json`: the `SphinxConfig` (`model_type` `"sphinx"`): the fully resolved `ModelConfig`
  (every component by registry name and arguments) with the LLM's whole transformers config, so
  the same architecture comes back whether the LLM came from a preset, a directory or a Python
  object; the image-token id; the frozen pretrained encoders referenced by their source instead
  of copied, each with the SHA-256 of its weights, checked when it is rebuilt;
- `model.safetensors`, or shards `model-0000k-of-0000n.safetensors` with
  `model.safetensors.index.json`: the weights, by `SphinxModel` parameter name, each tensor
  stored once (a tied LM head is tied again by the rebuilt LLM);
- `processor_config.json` and the tokenizer's files: the model's `SphinxProcessor`.

Checkpoints of format 1 (`config.yaml`, `checkpoint.json`, `tokenizer/`) load as before; saving
the loaded model writes this format (`sphinx-pipeline convert-checkpoint OLD NEW`).

The toolkit writes checkpoints itself rather than with transformers' `save_pretrained`, for what
that one does not do: referenced encoders, and writes that never lose anything (a hidden sibling
renamed into place when complete; an existing directory replaced only when it is an earlier
checkpoint holding none of the inputs). Nothing is read with pickle.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sphinx_mllm.core.outputs import AtomicOutputDirectory
from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.llm.merging.writer import (
    OutputTensor,
    StreamingShardWriter,
    plan_shards,
    shard_names,
    write_index,
)
from sphinx_mllm.pipeline.config import ConfigError, ModelConfig
from sphinx_mllm.pipeline.hf_config import FORMAT_VERSION, SphinxConfig
from sphinx_mllm.pipeline.model import SphinxModel
from sphinx_mllm.pipeline.processor import PROCESSOR_FILE, SphinxProcessor, saved_tokenizer

CONFIG_FILE = "config.json"
LEGACY_CONFIG_FILE = "config.yaml"  # format 1
LEGACY_MANIFEST_FILE = "checkpoint.json"  # format 1
WRITER = "sphinx-pipeline"  # the marker an earlier checkpoint must carry to be replaced
DEFAULT_SHARD_BYTES = 5 * 1024**3


def save_pretrained(
    model: SphinxModel,
    directory: str | Path,
    *,
    overwrite: bool = False,
    reference_frozen_encoders: bool = True,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    before_commit: Callable[[Path], None] | None = None,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Write `model` to `directory` atomically; an existing directory is refused unless
    `overwrite`, and even then unless it is an earlier checkpoint (its marker file) holding none
    of `inputs` (the files the model was read from). Frozen encoders whose config names a
    pretrained source are referenced by that source (with a checksum) instead of copied, unless
    `reference_frozen_encoders=False`. `before_commit` may add files to the hidden directory
    before it is renamed into place (a trainer's state)."""
    if model.model_config is None:
        raise ValueError(
            "This SphinxModel has no ModelConfig (it was assembled from parts by hand), so a "
            "checkpoint could not describe it; build it with build_model(config, components=...)"
        )
    model_config = config_to_save(model)
    referenced = _referenced_encoders(model) if reference_frozen_encoders else {}
    tensors = _unique_tensors(model, skip_prefixes=tuple(f"{p}." for p in referenced))
    config = SphinxConfig.of(
        model_config,
        model.image_token_id,
        referenced_encoders=referenced,
        architectures=[type(model).__name__],
    )
    output = AtomicOutputDirectory(directory, writer=WRITER, force=overwrite, inputs=inputs)
    try:
        config.to_json_file(output.path / CONFIG_FILE)
        _write_weights(output.path, tensors, shard_bytes, model_config)
        if model.processor is not None:
            model.processor.save_pretrained(output.path)
        if before_commit is not None:
            before_commit(output.path)
        return output.commit()
    except BaseException:
        output.abort()
        raise


# fields of a transformers config that say where it came from, not what it builds
PROVENANCE_FIELDS = (
    "transformers_version",
    "_name_or_path",
    "architectures",
    "dtype",
    "torch_dtype",
)
# ... and those that say what a forward returns (the dtype is the ModelConfig's)
_NOT_ARCHITECTURE = (
    *PROVENANCE_FIELDS, "id2label", "label2id", "problem_type", "output_attentions",
    "output_hidden_states", "return_dict",
)  # fmt: skip


def config_to_save(model: SphinxModel) -> ModelConfig:
    """`model.model_config` with the LLM's whole transformers config in `llm.config`, so that
    loading builds the same architecture (rope settings, grouped-query attention, tied
    embeddings, a resized vocabulary...) whatever the preset name says. An LLM that
    `AutoModelForCausalLM` would not rebuild from its config is refused, naming its class."""
    from transformers import AutoModelForCausalLM, PretrainedConfig

    llm = model.llm
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # LoRA-wrapped
    architecture = getattr(base, "config", None)
    if not isinstance(architecture, PretrainedConfig):
        raise ValueError(
            f"The LLM is a {type(base).__name__} without a transformers config, so a checkpoint "
            "could not rebuild it: use a transformers causal LM (AutoModelForCausalLM)"
        )
    try:
        rebuilt = AutoModelForCausalLM._model_mapping[type(architecture)]
    except KeyError:
        rebuilt = None
    if rebuilt is not type(base):
        what = "no class" if rebuilt is None else rebuilt.__name__
        raise ValueError(
            f"The LLM is a {type(base).__name__}, but AutoModelForCausalLM builds {what} for its "
            f"config (model_type {architecture.model_type!r}), so a checkpoint would come back "
            "as another model: register the class with AutoModelForCausalLM.register"
        )
    settings = architecture.to_dict()
    for key in _NOT_ARCHITECTURE:
        settings.pop(key, None)
    return model.model_config.replace(**{"llm.config": settings, "llm.overrides": {}})


# -- reading ---------------------------------------------------------------------------------------


@dataclass
class CheckpointDescription:
    """What a checkpoint directory says about its model: the `ModelConfig`, the image-token id
    (None in format 1: the tokenizer gives it), the referenced encoders (weight prefix ->
    source and SHA-256, the SHA-256 None in format 1), and the tensors format 1 left out as
    tied. `config_path` is the file that describes it."""

    model_config: ModelConfig
    config_path: Path
    image_token_id: int | None = None
    referenced: dict[str, dict[str, str | None]] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def describe_checkpoint(directory: str | Path) -> CheckpointDescription:
    """Read and check a checkpoint's description (either format); `CheckpointError` or
    `ConfigError` name the file at fault."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"No checkpoint directory at {directory}")
    if (directory / CONFIG_FILE).is_file():
        return _describe(directory / CONFIG_FILE)
    if (directory / LEGACY_CONFIG_FILE).is_file() or (directory / LEGACY_MANIFEST_FILE).is_file():
        return _describe_legacy(directory)
    raise CheckpointError(
        f"{directory} is not a sphinx-pipeline checkpoint: {CONFIG_FILE} is missing"
    )


def _describe(path: Path) -> CheckpointDescription:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("model_type") != SphinxConfig.model_type:
        kind = data.get("model_type") if isinstance(data, dict) else None
        raise CheckpointError(
            f"{path} describes a {kind!r} model, not a sphinx-pipeline checkpoint "
            f"(model_type {SphinxConfig.model_type!r})"
        )
    version = data.get("sphinx_format")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: sphinx_format {version!r}, this sphinx-pipeline reads {FORMAT_VERSION}"
        )
    if not isinstance(data.get("model"), dict):
        raise CheckpointError(
            f"{path}: 'model' must hold the model config, got {data.get('model')!r}"
        )
    try:
        model_config = ModelConfig.from_dict(data["model"])
    except ConfigError as error:
        raise error.within(f"{path}: model") from error
    image_token_id = data.get("image_token_id")
    if isinstance(image_token_id, bool) or not isinstance(image_token_id, int):
        raise CheckpointError(f"{path}: image_token_id must be an integer, got {image_token_id!r}")
    referenced = data.get("referenced_encoders", {})
    if not isinstance(referenced, dict) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("source"), str)
        and isinstance(entry.get("sha256"), str)
        for entry in referenced.values()
    ):
        raise CheckpointError(
            f"{path}: referenced_encoders must map weight prefixes to {{source, sha256}}, got "
            f"{referenced!r}"
        )
    return CheckpointDescription(model_config, path, image_token_id, referenced)


def _describe_legacy(directory: Path) -> CheckpointDescription:
    """Format 1: `config.yaml` and the manifest `checkpoint.json`."""
    for required in (LEGACY_CONFIG_FILE, LEGACY_MANIFEST_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(
                f"{directory} is not a sphinx-pipeline checkpoint: {required} is missing"
            )
    path = directory / LEGACY_MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format_version") != 1:
        raise CheckpointError(
            f"{path}: format_version {manifest.get('format_version')!r}, this sphinx-pipeline "
            f"reads 1 there ({FORMAT_VERSION} in {CONFIG_FILE})"
        )
    for key in ("tied", "referenced_encoders"):
        entries = manifest.get(key, {})
        if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entries.items()
        ):
            raise CheckpointError(f"{path}: {key} must map tensor names to names, got {entries!r}")
    return CheckpointDescription(
        ModelConfig.load(directory / LEGACY_CONFIG_FILE),
        directory / LEGACY_CONFIG_FILE,
        referenced={
            prefix: {"source": source, "sha256": None}
            for prefix, source in manifest.get("referenced_encoders", {}).items()
        },
        tied=dict(manifest.get("tied", {})),
        format_version=1,
    )


def load_pretrained(
    directory: str | Path,
    *,
    device: torch.device | str | None = None,
    components: dict[str, Any] | None = None,
    dtype: torch.dtype | str | None = None,
    config: SphinxConfig | None = None,
) -> SphinxModel:
    """Rebuild the model a checkpoint describes and load its weights (in `dtype` when given,
    else the saved one). A missing file, or weights that do not fit the config, raise
    `CheckpointError` naming the file and the tensors. `config` is what transformers' Auto
    classes pass: the directory's own config is read either way."""
    description = describe_checkpoint(directory)
    directory = description.config_path.parent
    components = dict(components or {})
    if "tokenizer" not in components:
        tokenizer = saved_tokenizer(directory)
        if tokenizer is not None:
            components["tokenizer"] = tokenizer
    model_config = description.model_config
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        model_config = model_config.replace(dtype=name)
    from sphinx_mllm.pipeline.building import build_model

    try:
        model = build_model(
            _weights_from_checkpoint(model_config), device=device, components=components
        )
    except ConfigError as error:
        raise error.within(str(description.config_path)) from error
    model.model_config = model_config
    if description.image_token_id not in (None, model.image_token_id):
        raise CheckpointError(
            f"{description.config_path}: image_token_id {description.image_token_id}, but the "
            f"model its config builds reads {model.image_token_id}"
        )
    if (directory / PROCESSOR_FILE).is_file():
        model.processor = _saved_processor(directory, model)
    _check_referenced(model, description)
    _load_weights(model, directory, description)
    return model


def _saved_processor(directory: Path, model: SphinxModel) -> SphinxProcessor:
    """The checkpoint's processor, checked against the model rebuilt from its config (older
    checkpoints have none: the processor built from the config serves)."""
    tokenizer = None if model.processor is None else model.processor.tokenizer
    try:
        processor = SphinxProcessor.from_pretrained(directory, tokenizer=tokenizer)
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    built = model.processor
    if built is not None and (
        processor.tokens_per_view != built.tokens_per_view
        or processor.image_token_id != model.image_token_id
    ):
        raise CheckpointError(
            f"{directory / PROCESSOR_FILE} gives {processor.tokens_per_view} visual tokens per "
            f"view and image-token id {processor.image_token_id}; the model its config builds "
            f"takes {built.tokens_per_view} and id {model.image_token_id}"
        )
    return processor


def load_weights(model: SphinxModel, directory: str | Path) -> None:
    """Load a checkpoint's weights into an existing model of the same config (checked first:
    nothing changes unless every tensor fits)."""
    description = describe_checkpoint(directory)
    _load_weights(model, description.config_path.parent, description)


def _weights_from_checkpoint(config: ModelConfig) -> ModelConfig:
    """The config to build before loading: nothing fetched that the checkpoint holds itself
    (referenced frozen encoders keep their pretrained source)."""
    return config.replace(**{"llm.pretrained": False})


def _referenced_encoders(model: SphinxModel) -> dict[str, dict[str, str]]:
    """`visual.encoders.<stream>` -> pretrained source and the SHA-256 of the weights, for
    frozen encoders that have a source."""
    referenced = {}
    specs = model.model_config.vision.encoders
    for spec, (stream, encoder) in zip(specs, model.visual.encoders.items(), strict=False):
        source = spec.options.get("pretrained")
        if source not in (None, False) and encoder.frozen:
            referenced[f"visual.encoders.{stream}"] = {
                "source": str(source),
                "sha256": weights_digest(encoder),
            }
    return referenced


def _check_referenced(model: SphinxModel, description: CheckpointDescription) -> None:
    """Each referenced encoder, rebuilt from its source, has the weights it was saved with."""
    modules = dict(model.named_modules())
    for prefix, entry in description.referenced.items():
        if prefix not in modules:
            raise CheckpointError(
                f"{description.config_path}: the referenced encoder {prefix} is not in the model "
                "its config builds"
            )
        expected = entry.get("sha256")
        if expected is None:  # format 1 stored no checksum
            continue
        found = weights_digest(modules[prefix])
        if found != expected:
            raise CheckpointError(
                f"{description.config_path}: the weights of {prefix} rebuilt from "
                f"{entry['source']!r} have SHA-256 {found[:16]}..., the model was saved with "
                f"{expected[:16]}...: the source changed since"
            )


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state: each tensor's name, dtype, shape and bytes, in order.
    Kept per module while none of its tensors is replaced or changed in place (their storage
    and version counters say so), since a frozen encoder is hashed again at every checkpoint
    of a run (SPHINX's: 3.4 billion parameters)."""
    state = module.state_dict()
    key = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    cached = _DIGESTS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    _DIGESTS[module] = (key, digest.hexdigest())
    return _DIGESTS[module][1]


_DIGESTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = (
    weakref.WeakKeyDictionary()
)


def tied_aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each name whose tensor shares storage with an earlier name (a tied LM head) -> that name."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def _unique_tensors(model: SphinxModel, skip_prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict without referenced encoders, each shared tensor stored once."""
    state = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if not name.startswith(skip_prefixes)
    }
    tied = tied_aliases(state)
    tensors = {}
    for name, tensor in state.items():
        if name in tied:
            continue
        if tensor.device.type == "meta":
            raise ValueError(f"{name} is on the meta device: there are no weights to save")
        tensors[name] = tensor
    return tensors


def _write_weights(
    directory: Path, tensors: dict[str, torch.Tensor], shard_bytes: int, config: ModelConfig
) -> None:
    write_weights(directory, tensors, shard_bytes, {"format": "pt", "sphinx_model": config.name})


def write_weights(
    directory: Path, tensors: dict[str, torch.Tensor], shard_bytes: int, metadata: dict[str, str]
) -> None:
    """`tensors` as `model.safetensors`, or as shards of at most `shard_bytes` with the
    `model.safetensors.index.json` transformers reads, streamed tensor by tensor."""
    planned = [OutputTensor(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    shards = plan_shards(planned, shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else shard_names(len(shards))
    for shard, file_name in zip(shards, names, strict=True):
        writer = StreamingShardWriter(directory / file_name, shard, metadata)
        for tensor in shard:
            writer.write(tensor.name, [tensors[tensor.name]])
    if len(shards) > 1:
        write_index(directory, shards, names)


def _load_weights(model: SphinxModel, directory: Path, description: CheckpointDescription) -> None:
    try:
        checkpoint = ModelCheckpoint(directory)
    except (CheckpointError, FileNotFoundError) as error:
        raise CheckpointError(f"{directory}: cannot read the weights: {error}") from error
    with checkpoint:
        state = model.state_dict()
        referenced = tuple(f"{prefix}." for prefix in description.referenced)
        tied = {**tied_aliases(state), **description.tied}
        expected = {name for name in state if name not in tied and not name.startswith(referenced)}
        stored = set(checkpoint.names())
        problems = weight_problems(
            expected - stored,
            stored - expected,
            shapes=(
                f"{name}: checkpoint {checkpoint.shape(name)}, model {tuple(state[name].shape)}"
                for name in sorted(expected & stored)
                if checkpoint.shape(name) != tuple(state[name].shape)
            ),
        )
        if problems:
            raise CheckpointError(
                f"The weights in {directory} do not fit its {description.config_path.name}:\n"
                + "\n".join(problems)
            )
        with torch.no_grad():
            for name in sorted(expected):
                target = state[name]
                target.copy_(checkpoint.get(name).to(dtype=target.dtype))
    for alias, source in description.tied.items():
        if state[alias].data_ptr() != state[source].data_ptr():
            raise CheckpointError(
                f"{directory / LEGACY_MANIFEST_FILE} says {alias} is tied to {source}, but the "
                "model built from the config does not tie them"
            )


def weight_problems(
    missing: Iterable[str],
    unexpected: Iterable[str],
    *,
    duplicated: Iterable[str] = (),
    shapes: Iterable[str] = (),
) -> list[str]:
    """The lines of an error about weights that do not fit a model, one kind per line."""
    missing, unexpected = set(missing), set(unexpected)
    problems = []
    if missing:
        problems.append(f"  missing from the checkpoint ({len(missing)}): {_names(missing)}")
    if unexpected:
        problems.append(f"  not in the model ({len(unexpected)}): {_names(unexpected)}")
    problems.extend(f"  used twice: {line}" for line in duplicated)
    problems.extend(f"  shape mismatch: {line}" for line in shapes)
    return problems


def _names(names: set[str], limit: int = 12) -> str:
    ordered = sorted(names)
    more = f" ... and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more
