"""Self-describing model checkpoints: `save_pretrained(model, dir)` / `load_pretrained(dir)`.

A checkpoint directory holds

- `config.yaml`: the fully resolved `ModelConfig` (every component by registry name and arguments),
  with the LLM's whole transformers config (`llm.config`): the checkpoint rebuilds the same
  architecture whether the LLM came from a preset, a directory or a Python object;
- `model.safetensors`, or shards `model-0000k-of-0000n.safetensors` with
  `model.safetensors.index.json`: the weights, by `SphinxModel` parameter name;
- `processor_config.json` and `tokenizer/`: the model's `SphinxProcessor` (chat template in full,
  placement, image token, view splitter, visual tokens per view) and its tokenizer files;
- `checkpoint.json`: the format version, the tensors left out because they are tied to another
  (`lm_head.weight` to the embeddings) and the frozen pretrained encoders referenced by their
  source instead of copied (rebuilt from that source on loading).

Everything is written into a hidden sibling directory and renamed into place when complete, so an
interrupted save never leaves a directory that looks finished. Nothing is read with pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
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
from sphinx_mllm.pipeline.model import SphinxModel
from sphinx_mllm.pipeline.processor import PROCESSOR_FILE, TOKENIZER_DIR, SphinxProcessor

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "checkpoint.json"
FORMAT_VERSION = 1
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
    pretrained source are referenced by that source instead of copied, unless
    `reference_frozen_encoders=False`. `before_commit` may add files to the hidden directory
    before it is renamed into place (a trainer's state)."""
    if model.config is None:
        raise ValueError(
            "This SphinxModel has no ModelConfig (it was assembled from parts by hand), so a "
            "checkpoint could not describe it; build it with build_model(config, components=...)"
        )
    config = config_to_save(model)
    referenced = _referenced_encoders(model) if reference_frozen_encoders else {}
    tensors, tied = _unique_tensors(model, skip_prefixes=tuple(f"{p}." for p in referenced))
    output = AtomicOutputDirectory(directory, writer=WRITER, force=overwrite, inputs=inputs)
    try:
        config.save(output.path / CONFIG_FILE)
        _write_weights(output.path, tensors, shard_bytes, config)
        if model.processor is not None:
            model.processor.save_pretrained(output.path)
        manifest = {
            "format_version": FORMAT_VERSION,
            "tied": tied,
            "referenced_encoders": referenced,
        }
        (output.path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if before_commit is not None:
            before_commit(output.path)
        return output.commit()
    except BaseException:
        output.abort()
        raise


# transformers config entries that say where a config came from or what a forward returns, not
# the architecture (the dtype is the ModelConfig's)
_NOT_ARCHITECTURE = (
    "transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures",
    "id2label", "label2id", "problem_type", "output_attentions", "output_hidden_states",
    "return_dict",
)  # fmt: skip


def config_to_save(model: SphinxModel) -> ModelConfig:
    """`model.config` with the LLM's whole transformers config in `llm.config`, so that loading
    builds the same architecture (rope settings, grouped-query attention, tied embeddings, a
    resized vocabulary...) whatever the preset name says. An LLM that `AutoModelForCausalLM`
    would not rebuild from its config is refused, naming its class."""
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
    return model.config.replace(**{"llm.config": settings, "llm.overrides": {}})


def load_pretrained(
    directory: str | Path,
    *,
    device: torch.device | str | None = None,
    components: dict[str, Any] | None = None,
) -> SphinxModel:
    """Rebuild the model a checkpoint describes and load its weights. A missing file, or weights
    that do not fit the config, raise `CheckpointError` naming the file and the tensors."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"No checkpoint directory at {directory}")
    for required in (CONFIG_FILE, MANIFEST_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(
                f"{directory} is not a sphinx-pipeline checkpoint: {required} is missing"
            )
    manifest = _read_manifest(directory)
    config = ModelConfig.load(directory / CONFIG_FILE)
    components = dict(components or {})
    if (directory / TOKENIZER_DIR).is_dir() and "tokenizer" not in components:
        from transformers import AutoTokenizer

        components["tokenizer"] = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR)
    from sphinx_mllm.pipeline.building import build_model

    try:
        model = build_model(_weights_from_checkpoint(config), device=device, components=components)
    except ConfigError as error:
        raise ConfigError(f"{directory / CONFIG_FILE}: {error}") from error
    model.config = config
    if (directory / PROCESSOR_FILE).is_file():
        model.processor = _saved_processor(directory, model)
    _load_weights(model, directory, manifest)
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
    directory = Path(directory).expanduser()
    if not (directory / MANIFEST_FILE).is_file():
        raise CheckpointError(
            f"{directory} is not a sphinx-pipeline checkpoint: no {MANIFEST_FILE}"
        )
    _load_weights(model, directory, _read_manifest(directory))


def _read_manifest(directory: Path) -> dict[str, Any]:
    """`checkpoint.json`, checked: a JSON object of this format version, with a mapping of
    tied tensors and of referenced encoders."""
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {manifest.get('format_version')!r}, this sphinx-pipeline "
            f"reads {FORMAT_VERSION}"
        )
    for key in ("tied", "referenced_encoders"):
        entries = manifest.get(key, {})
        if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entries.items()
        ):
            raise CheckpointError(f"{path}: {key} must map tensor names to names, got {entries!r}")
    return manifest


def _weights_from_checkpoint(config: ModelConfig) -> ModelConfig:
    """The config to build before loading: nothing fetched that the checkpoint holds itself
    (referenced frozen encoders keep their pretrained source)."""
    return config.replace(**{"llm.pretrained": False})


def _referenced_encoders(model: SphinxModel) -> dict[str, str]:
    """`visual.encoders.<stream>` -> pretrained source, for frozen encoders that have one."""
    referenced = {}
    specs = model.config.vision.encoders
    for spec, (stream, encoder) in zip(specs, model.visual.encoders.items(), strict=False):
        source = spec.options.get("pretrained")
        if source not in (None, False) and encoder.frozen:
            referenced[f"visual.encoders.{stream}"] = str(source)
    return referenced


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


def _unique_tensors(
    model: SphinxModel, skip_prefixes: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict without referenced encoders, each shared tensor stored once; `tied` maps
    each left-out alias to the name that is stored."""
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
    return tensors, tied


def _write_weights(
    directory: Path, tensors: dict[str, torch.Tensor], shard_bytes: int, config: ModelConfig
) -> None:
    planned = [OutputTensor(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    shards = plan_shards(planned, shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else shard_names(len(shards))
    metadata = {"format": "pt", "sphinx_model": config.name}
    for shard, file_name in zip(shards, names, strict=True):
        writer = StreamingShardWriter(directory / file_name, shard, metadata)
        for tensor in shard:
            writer.write(tensor.name, [tensors[tensor.name]])
    if len(shards) > 1:
        write_index(directory, shards, names)


def _load_weights(model: SphinxModel, directory: Path, manifest: dict[str, Any]) -> None:
    try:
        checkpoint = ModelCheckpoint(directory)
    except (CheckpointError, FileNotFoundError) as error:
        raise CheckpointError(f"{directory}: cannot read the weights: {error}") from error
    with checkpoint:
        state = model.state_dict()
        referenced = tuple(f"{prefix}." for prefix in manifest.get("referenced_encoders", {}))
        tied = manifest.get("tied", {})
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
                f"The weights in {directory} do not fit its {CONFIG_FILE}:\n" + "\n".join(problems)
            )
        with torch.no_grad():
            for name in sorted(expected):
                target = state[name]
                target.copy_(checkpoint.get(name).to(dtype=target.dtype))
    for alias, source in tied.items():
        if state[alias].data_ptr() != state[source].data_ptr():
            raise CheckpointError(
                f"{directory / MANIFEST_FILE} says {alias} is tied to {source}, but the model "
                "built from the config does not tie them"
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
