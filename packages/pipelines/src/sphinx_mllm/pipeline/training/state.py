"""Resumable training checkpoints: the model (a sphinx-pipeline checkpoint) plus the trainer's
state, written atomically every N steps, the last k kept.

    RUN/checkpoints/step-000100/
        config.json, model.safetensors, processor and tokenizer files    (the model)
        trainer/optimizer.safetensors   optimizer tensors, by parameter name
        trainer/state.json              step, data position, scheduler, optimizer hyper-parameters,
                                        Python RNG, the names of what trains
        trainer/rng.safetensors         torch (and CUDA) RNG states

Nothing is pickled. A directory that fails to load (a crash mid-write leaves only a hidden
partial directory, but disks also corrupt files) is skipped with a warning and the previous one
is used. FSDP runs write sharded checkpoints instead (`training.sharded_checkpoints`), in the
same `step-*` directories.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from sphinx_mllm.core.outputs import read_marker
from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.pipeline.checkpoint import WRITER as CHECKPOINT_WRITER
from sphinx_mllm.pipeline.checkpoint import load_weights, save_pretrained

T = TypeVar("T")
TRAINER_DIR = "trainer"
STEP_DIR = re.compile(r"^step-(\d{6,})$")


@dataclass
class TrainerState:
    """Where a run stands: optimisation steps done and the data position after them."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:06d}"


def save_training_checkpoint(
    run: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    *,
    keep_last: int,
) -> Path:
    """Write the model and trainer state for `state.step`, then prune to the last `keep_last`."""
    model = _unwrapped(model)
    target = checkpoint_dir(run, state.step)
    names = {id(p): n for n, p in model.named_parameters()}

    def add_trainer_state(directory: Path) -> None:
        trainer = directory / TRAINER_DIR
        trainer.mkdir()
        tensors, groups = _optimizer_state(optimizer, names)
        save_file(tensors, str(trainer / "optimizer.safetensors"))
        save_file(torch_rng(), str(trainer / "rng.safetensors"))
        python_rng = random.getstate()
        payload = {
            "trainer": state.__dict__,
            "param_groups": groups,
            "scheduler": scheduler.state_dict(),
            "python_rng": [python_rng[0], list(python_rng[1]), python_rng[2]],
        }
        (trainer / "state.json").write_text(json.dumps(payload, indent=1))

    save_pretrained(model, target, overwrite=True, before_commit=add_trainer_state)
    prune_checkpoints(run, keep_last)
    return target


def prune_checkpoints(run: Path, keep_last: int) -> None:
    """Remove all but the last `keep_last` checkpoints (0 keeps every one), and only those a
    trainer wrote (their marker: an ordinary or a sharded checkpoint)."""
    from sphinx_mllm.pipeline.training.sharded_checkpoints import WRITER as SHARDED_WRITER

    for old in list_checkpoints(run)[:-keep_last] if keep_last > 0 else []:
        if (read_marker(old) or {}).get("writer") in (CHECKPOINT_WRITER, SHARDED_WRITER):
            shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def load_latest_checkpoint(
    run: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainerState | None:
    """Restore the newest loadable checkpoint of `run` into the given objects; a corrupt one is
    skipped with a warning. None when the run has no checkpoint."""
    return newest_loadable(
        run,
        lambda directory: _restore(directory, model, optimizer, scheduler),
        (CheckpointError, OSError, ValueError, KeyError, RuntimeError),
    )


def newest_loadable(
    run: Path, load: Callable[[Path], T], errors: tuple[type[BaseException], ...]
) -> T | None:
    """`load(directory)` of the newest checkpoint of `run` it succeeds on: a checkpoint whose
    load raises one of `errors` is skipped with a warning for the one before it; an error
    naming every failure when none loads; None when the run has no checkpoint."""
    failures = []
    for directory in reversed(list_checkpoints(run)):
        try:
            return load(directory)
        except errors as error:
            failures.append(f"{directory.name}: {error}")
            warnings.warn(
                f"Checkpoint {directory} cannot be loaded ({error}); falling back to the one "
                "before it",
                RuntimeWarning,
                stacklevel=3,
            )
    if failures:
        raise CheckpointError(
            f"No checkpoint of {run} could be loaded:\n  " + "\n  ".join(failures)
        )
    return None


def _restore(directory: Path, model: Any, optimizer, scheduler) -> TrainerState:
    from sphinx_mllm.pipeline.training.sharded_checkpoints import is_sharded_checkpoint

    if is_sharded_checkpoint(directory):
        raise CheckpointError(
            f"{directory} is a sharded checkpoint of an fsdp run: resume it with --set "
            "strategy=fsdp"
        )
    model = _unwrapped(model)
    trainer = directory / TRAINER_DIR
    payload = json.loads((trainer / "state.json").read_text())
    tensors = load_file(str(trainer / "optimizer.safetensors"))
    rng = load_file(str(trainer / "rng.safetensors"))
    load_weights(model, directory)  # every tensor checked before any changes
    _load_optimizer_state(optimizer, tensors, payload["param_groups"], model)
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    version, internal, gauss = payload["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return TrainerState(**payload["trainer"])


def _optimizer_state(optimizer, names: dict[int, str]) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer tensors keyed `<parameter name>/<slot>`, and the parameter groups as JSON
    (parameters by name)."""
    tensors: dict[str, torch.Tensor] = {}
    for parameter, slots in optimizer.state.items():
        for slot, value in slots.items():
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{names[id(parameter)]}/{slot}"] = value.detach().cpu().contiguous()
    groups = []
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        settings["params"] = [names[id(p)] for p in group["params"]]
        groups.append(settings)
    return tensors, groups


def _load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], groups: list, model) -> None:
    parameters = dict(model.named_parameters())
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"The checkpoint has {len(groups)} optimizer groups, this run "
            f"{len(optimizer.param_groups)}"
        )
    for saved, group in zip(groups, optimizer.param_groups, strict=True):
        current = [n for n, p in parameters.items() if any(p is q for q in group["params"])]
        if sorted(current) != sorted(saved["params"]):
            raise ValueError(
                "The parameters that train differ from the checkpoint's (another --stage?): "
                f"{sorted(set(current) ^ set(saved['params']))[:8]}"
            )
        for key, value in saved.items():
            if key != "params":
                group[key] = tuple(value) if key == "betas" else value
    optimizer.state.clear()
    for key, value in tensors.items():
        name, slot = key.rsplit("/", 1)
        parameter = parameters[name]
        optimizer.state[parameter][slot] = (
            value if slot == "step" else value.to(parameter.device, parameter.dtype)
        )


def torch_rng() -> dict[str, torch.Tensor]:
    """This process's torch (and CUDA) generator states."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _unwrapped(model: Any) -> Any:
    """The SphinxModel inside a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)
