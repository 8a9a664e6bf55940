"""Sharded training checkpoints of FSDP runs, written with `torch.distributed.checkpoint` (DCP):
every process writes its share of the model and the optimizer, any number of processes loads
them (DCP reshards), and `consolidate` turns one into an ordinary checkpoint in one process.

    RUN/checkpoints/step-000100/
        sharded-checkpoint.json   step, world size and every file with its size (written last)
        config/                   config.json, processor and tokenizer files: the model, no weights
        weights/shard-0000K-model-00001-of-00001.safetensors
                                  the shards of process K - 1, `model.<name>` and
                                  `optimizer.<name>.<slot>`, each with its offsets in the whole
                                  tensor (a tensor no process shards is written by one of them)
        trainer/state.json        step, data position, scheduler, optimizer hyper-parameters by
                                  parameter name, the train config, the world size
        trainer/rng-rank-0000R.safetensors   process R's torch (and CUDA) RNG; its Python RNG in
                                  the file's metadata

The weights use DCP's Hugging Face storage (safetensors, whose headers DCP reads the layout
from), so nothing is pickled, as in the ordinary checkpoints. Every model parameter is saved,
frozen encoders too, so consolidating needs no other file; a tied LM head is saved once, as the
embedding it shares its memory with.

A checkpoint is complete or ignored: the processes write into a hidden `.step-000100.partial`
beside it, and once every one has finished (a barrier) the main process writes the manifest and
renames the directory into place; a killed run leaves only the hidden one, which resume never
reads and the next checkpoint removes. A `step-*` directory whose manifest is missing or names a
file that is not there at its size is skipped on resume with a warning, the one before it used.
The directory must be on a file system every process sees (as DCP requires).

RNG on resume: with the world size the checkpoint was written with, every process gets its own
generators back (resume is exact); with another world size each process seeds its generators
from (seed, step, rank). The data order does not depend on them (it is seeded by epoch), only
random layers such as dropout do, and those draw differently anyway once the batch is split
differently.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sphinx_mllm.core.outputs import read_marker, write_marker
from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.pipeline.training.distributed import Distributed
from sphinx_mllm.pipeline.training.state import (
    TRAINER_DIR,
    TrainerState,
    checkpoint_dir,
    newest_loadable,
    prune_checkpoints,
    torch_rng,
)

MANIFEST = "sharded-checkpoint.json"
CONFIG_DIR = "config"
WEIGHTS_DIR = "weights"
WRITER = "sphinx-pipeline train (sharded checkpoint)"
FORMAT_VERSION = 1


def save_sharded_checkpoint(
    run: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    *,
    train_config: dict[str, Any],
    dist: Distributed,
    keep_last: int,
) -> Path:
    """Write the checkpoint of `state.step` (every process calls this), then prune to the last
    `keep_last`. `train_config` (the run's `TrainConfig` as a dict) says how to rebuild the
    model's trainable parts (LoRA) when consolidating."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    target = checkpoint_dir(run, state.step)
    partial = target.with_name(f".{target.name}.partial")
    if dist.is_main:
        _remove_partials(target.parent)
        partial.mkdir(parents=True)
        write_marker(partial, WRITER)
        (partial / TRAINER_DIR).mkdir()
        (partial / WEIGHTS_DIR).mkdir()
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    tensors = {"model": _one_per_storage(model_state), "optimizer": optimizer_state["state"]}
    _save_weights(tensors, partial / WEIGHTS_DIR, distributed=dist.enabled)
    _save_rng(partial / TRAINER_DIR / _rng_file(dist.rank))
    dist.barrier()
    if dist.is_main:
        _write_description(partial / CONFIG_DIR, model)
        payload = {
            "trainer": asdict(state),
            "world_size": dist.world_size,
            "train": train_config,
            "scheduler": scheduler.state_dict(),
            "param_groups": optimizer_state["param_groups"],
        }
        (partial / TRAINER_DIR / "state.json").write_text(json.dumps(payload, indent=1))
        _write_manifest(partial, state.step, dist.world_size)
        if target.exists():  # written before by a run that went on, was killed and resumed
            if (read_marker(target) or {}).get("writer") != WRITER:
                raise CheckpointError(f"{target} exists and no sharded checkpoint wrote it")
            shutil.rmtree(target)
        partial.rename(target)
        prune_checkpoints(run, keep_last)
    dist.barrier()
    return target


def is_sharded_checkpoint(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def check_complete(directory: Path) -> dict[str, Any]:
    """The manifest of a complete sharded checkpoint; `CheckpointError` (one line, naming the
    directory) for anything else."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No checkpoint directory at {directory}")
    if not (directory / MANIFEST).is_file():
        if (directory / "config.json").is_file():
            raise CheckpointError(
                f"{directory} is an ordinary checkpoint (of a ddp or single-process run), not a "
                "sharded one"
            )
        raise CheckpointError(
            f"{directory} is not a complete sharded checkpoint: {MANIFEST} is missing (a "
            "directory a run was still writing, or not a checkpoint of an fsdp run)"
        )
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{directory / MANIFEST} is not a manifest ({error})") from error
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / MANIFEST}: format {manifest.get('format')!r}, this sphinx-pipeline "
            f"reads {FORMAT_VERSION}"
        )
    wrong = [
        name
        for name, size in sorted(files.items())
        if not (directory / name).is_file() or (directory / name).stat().st_size != size
    ]
    if wrong:
        raise CheckpointError(
            f"{directory} is incomplete: {len(wrong)} file(s) missing or of another size than "
            f"its manifest says ({', '.join(wrong[:4])})"
        )
    return manifest


def load_latest_sharded_checkpoint(
    run: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    dist: Distributed,
    seed: int,
) -> TrainerState | None:
    """Restore the newest complete sharded checkpoint of `run` (every process calls this); an
    incomplete one is skipped with a warning. None when the run has no checkpoint. Only
    completeness falls back: the same answer on every process (one file system), whereas a
    failure while restoring could strike one process and leave the others waiting."""

    def complete(directory: Path) -> Path:
        check_complete(directory)
        return directory

    directory = newest_loadable(run, complete, (CheckpointError,))
    if directory is None:
        return None
    return _restore(directory, model, optimizer, scheduler, dist=dist, seed=seed)


def _restore(directory: Path, model, optimizer, scheduler, *, dist, seed) -> TrainerState:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    payload = json.loads((directory / TRAINER_DIR / "state.json").read_text())
    model_state, optimizer_state = get_state_dict(model, optimizer)
    _check_same_parameters(payload["param_groups"], optimizer_state["param_groups"], directory)
    tensors = {"model": _one_per_storage(model_state), "optimizer": optimizer_state["state"]}
    _load_weights(tensors, directory / WEIGHTS_DIR, distributed=dist.enabled)
    optimizer_state["param_groups"] = [
        {key: tuple(value) if key == "betas" else value for key, value in group.items()}
        for group in payload["param_groups"]
    ]
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
    scheduler.load_state_dict(payload["scheduler"])
    state = TrainerState(**payload["trainer"])
    rng = directory / TRAINER_DIR / _rng_file(dist.rank)
    if payload["world_size"] == dist.world_size and rng.is_file():
        _load_rng(rng)
    else:
        reseed = _derived_seed(seed, state.step, dist.rank)
        torch.manual_seed(reseed)
        random.seed(reseed)
    return state


def _check_same_parameters(saved: list[dict], current: list[dict], directory: Path) -> None:
    saved_names = [sorted(group["params"]) for group in saved]
    current_names = [sorted(group["params"]) for group in current]
    if saved_names != current_names:
        differ = sorted(
            {name for group in saved_names for name in group}
            ^ {name for group in current_names for name in group}
        )
        raise CheckpointError(
            f"{directory}: the parameters that train differ from the checkpoint's (another "
            f"--set stage?): {differ[:8]}"
        )


# -- consolidation ---------------------------------------------------------------------------------


def load_sharded_model(directory: Path) -> Any:
    """The model of a sharded checkpoint, whole, in this process (no process group needed):
    rebuilt from its config, made ready for its stage as the run made it (LoRA adapters, fp32
    weights for what trained), loaded (DCP joins the shards of any number of processes), then
    LoRA merged into the LLM."""
    from sphinx_mllm.pipeline.building import build_model
    from sphinx_mllm.pipeline.checkpoint import describe_checkpoint
    from sphinx_mllm.pipeline.processor import PROCESSOR_FILE, SphinxProcessor, saved_tokenizer
    from sphinx_mllm.pipeline.training.trainer import TrainConfig, prepare_model

    directory = Path(directory)
    check_complete(directory)
    payload = json.loads((directory / TRAINER_DIR / "state.json").read_text())
    config_dir = directory / CONFIG_DIR
    description = describe_checkpoint(config_dir)
    tokenizer = saved_tokenizer(config_dir)
    model = build_model(
        description.model_config.replace(**{"llm.pretrained": False}),
        components={"tokenizer": tokenizer} if tokenizer is not None else None,
    )
    model.model_config = description.model_config
    if (config_dir / PROCESSOR_FILE).is_file():
        model.processor = SphinxProcessor.from_pretrained(config_dir, tokenizer=model.tokenizer)
    prepare_model(model, TrainConfig(**payload["train"]))
    state = {"model": _one_per_storage(model.state_dict())}
    _load_weights(state, directory / WEIGHTS_DIR, distributed=False)
    if hasattr(model.llm, "merge_and_unload"):
        model.llm = model.llm.merge_and_unload()
    return model


def consolidate(directory: Path, out: Path, *, force: bool = False) -> Path:
    """Write the sharded checkpoint `directory` as the ordinary checkpoint `out`
    (`SphinxModel.from_pretrained(out)`); `out` is replaced only with `force`, and only when
    it is an earlier sphinx-pipeline checkpoint."""
    model = load_sharded_model(directory)
    return model.save_pretrained(out, overwrite=force, inputs=[directory])


# -- files -----------------------------------------------------------------------------------------


def _one_per_storage(state: dict[str, Any]) -> dict[str, Any]:
    """`state` without the names whose tensor shares another's memory (a tied LM head): a
    tensor is stored once, and loading it fills its aliases, which share its memory."""
    from torch.distributed.tensor import DTensor

    seen: set[tuple] = set()
    kept = {}
    for name, tensor in state.items():
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        if local.numel():  # an empty shard has no memory to share
            key = (local.untyped_storage().data_ptr(), local.storage_offset(), local.shape)
            if key in seen:
                continue
            seen.add(key)
        kept[name] = tensor
    return kept


def _save_weights(tensors: dict[str, Any], folder: Path, *, distributed: bool) -> None:
    """Each process's shards of `tensors` (nested dicts of tensors and DTensors) into its own
    safetensors file of `folder`."""
    import torch.distributed.checkpoint as dcp

    writer = dcp.HuggingFaceStorageWriter(str(folder), save_distributed=True)
    with _single_process_is_meant(not distributed):
        dcp.save(tensors, storage_writer=writer, no_dist=not distributed)


def _load_weights(tensors: dict[str, Any], folder: Path, *, distributed: bool) -> None:
    """Fill `tensors` in place (each process its shards) from what `_save_weights` wrote, by any
    number of processes; a tensor missing from the files is an error naming it."""
    import torch.distributed.checkpoint as dcp

    reader = dcp.HuggingFaceStorageReader(str(folder))
    with _single_process_is_meant(not distributed):
        dcp.load(tensors, storage_reader=reader, no_dist=not distributed)


@contextmanager
def _single_process_is_meant(single: bool) -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group, even when asked
    to (`no_dist=True`)."""
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def _write_description(directory: Path, model: Any) -> None:
    """config.json and the processor, as an ordinary checkpoint has them, without weights."""
    from sphinx_mllm.pipeline.checkpoint import CONFIG_FILE, config_to_save
    from sphinx_mllm.pipeline.hf_config import SphinxConfig

    directory.mkdir()
    config = SphinxConfig.of(
        config_to_save(model), model.image_token_id, architectures=["SphinxModel"]
    )
    config.to_json_file(directory / CONFIG_FILE)
    if model.processor is not None:
        model.processor.save_pretrained(directory)


def _write_manifest(directory: Path, step: int, world_size: int) -> None:
    files = {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.parent != directory
    }
    manifest = {"format": FORMAT_VERSION, "step": step, "world_size": world_size, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _remove_partials(folder: Path) -> None:
    """Hidden partial checkpoints a killed run left: those this module wrote (its marker), or
    empty (killed before the marker was written)."""
    for partial in folder.glob(".step-*.partial") if folder.is_dir() else ():
        if (read_marker(partial) or {}).get("writer") == WRITER or not any(partial.iterdir()):
            shutil.rmtree(partial, ignore_errors=True)


def _rng_file(rank: int) -> str:
    return f"rng-rank-{rank:05d}.safetensors"


def _save_rng(path: Path) -> None:
    version, internal, gauss = random.getstate()
    python = json.dumps([version, list(internal), gauss])
    save_file(torch_rng(), str(path), metadata={"python_rng": python})


def _load_rng(path: Path) -> None:
    with safe_open(str(path), framework="pt") as rng:
        torch.set_rng_state(rng.get_tensor("torch"))
        if "cuda" in set(rng.keys()) and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng.get_tensor("cuda"))
        version, internal, gauss = json.loads(rng.metadata()["python_rng"])
    random.setstate((version, tuple(internal), gauss))


def _derived_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
