"""torch.distributed plumbing: the process group `torchrun` describes in the environment, DDP
wrapping, gradient synchronisation while accumulating (DDP and FSDP), and reductions. One process
without `torchrun` is a world of one. FSDP's sharding itself is in `training.fsdp`.

    torchrun --nproc_per_node 2 -m sphinx_mllm.pipeline train --preset demo ...
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str | None = None) -> Distributed:
        """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA), if any."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        target = torch.device(device)
        if target.type == "cuda":
            target = torch.device("cuda", local_rank)
            torch.cuda.set_device(target)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
        return cls(rank, world_size, local_rank, target)

    def wrap(self, model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """DDP when the world is larger than one process; the model itself otherwise.
        `find_unused_parameters` only when a step can leave a trainable parameter without a
        gradient (`training.unused_parameters` decides): the search walks the autograd graph
        after every backward, and DDP warns on every run that it finds nothing."""
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    def sum(self, value: float | torch.Tensor) -> float:
        """The sum of a number over all processes."""
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self._reduce_device)
        if self.enabled:
            dist.all_reduce(tensor)
        return float(tensor)

    @property
    def _reduce_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self, *, synchronise: bool = True) -> None:
        """Leave the process group: first free what still holds it (a DDP wrapper lives in
        reference cycles, and its reducer torn down after the group, at interpreter exit, can
        abort the process), then wait for every process (`synchronise`, on a normal end, so
        none tears down while another still communicates), then destroy it."""
        if not (self.enabled and dist.is_initialized()):
            return
        gc.collect()
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def gradient_sync(model: Any, *, enabled: bool) -> Iterator[None]:
    """Whether the backward inside reduces gradients over the processes: off on all but the
    last micro-batch of a step (DDP's `no_sync`, FSDP's `set_requires_gradient_sync`), so that
    accumulation communicates once per step."""
    from sphinx_mllm.pipeline.training.fsdp import is_sharded

    if isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield
