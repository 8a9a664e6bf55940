"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for a `SphinxModel`: what is sharded, in which
units, at which precision, and how a sharded model is gathered back whole.

Units, innermost first: each decoder layer of the LLM (found through the transformers model's
`_no_split_modules`, through a peft wrapper too), each visual encoder, then the root (the
embeddings, final norm, LM head and the mixer). A unit's parameters are all-gathered just before
its forward and freed after it (again for backward), its gradients reduce-scattered after its
backward, so a rank holds 1/N of every parameter, gradient and optimizer state, plus one unit
whole at a time.

Frozen encoders are sharded too, each its own unit. Measured on the `demo` preset, stage
`finetune` (encoders frozen, 829,848 of its 1,724,440 parameters), 2 processes on gloo, the
parameters each process holds (`local_parameter_bytes`, fp32):

| frozen encoders | parameters per process | bytes per process | of the whole model |
|---|---|---|---|
| replicated (`ignored_params` of the root) | 1,277,272 | 5,109,088 | 74 % |
| sharded (each encoder a unit) | 862,348 | 3,449,392 | 50 % |

(the whole model: 6,897,760 bytes; a sharded tensor's rows are padded to a multiple of the
number of processes). For SPHINX the frozen encoders are 3.4 of its 16.4 billion parameters,
6.8 GB in bf16 on every GPU if replicated; sharded over 8 they cost 0.85 GB and one all-gather
per forward (none in backward: nothing in them trains), which FSDP pays for every other unit
anyway, and the memory goes to activations instead.

Precision: the weights that train are fp32 (master weights); with bf16 the all-gathered weights
are cast to bf16 for compute (`MixedPrecisionPolicy(param_dtype=bfloat16)`; the trainer's bf16
autocast stays on around the forward, as with DDP), and gradients are reduced in fp32
(`reduce_dtype=float32`), so accumulation over ranks does not round. A unit may mix a frozen
bf16 base with fp32 LoRA adapters: FSDP2 only needs what trains in a unit to share a dtype.

A sharded model cannot run on one process alone: held-out scoring during training runs on every
process at once (`evaluating_in_step`), and the trained model is gathered into an ordinary copy
on the main process for export (`gathered_copy`).

gloo (CPU) runs FSDP2 in torch 2.14: its all-gather and reduce-scatter (with `AVG`) are there,
so the tests run two CPU processes without a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers LLM (a peft-wrapped one too): the modules whose
    class its `_no_split_modules` names (what accelerate and HF's Trainer wrap for FSDP)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [module for module in base.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(
            f"Cannot find the decoder layers of the LLM {type(base).__name__} to shard: its "
            f"_no_split_modules ({sorted(names) or 'none'}) names no module class in it"
        )
    return layers


def mixed_precision(compute_dtype: torch.dtype | None):
    """fp32 master weights, compute in `compute_dtype` (None: as stored), fp32 reductions."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)


def shard_model(model: Any, device: torch.device, *, compute_dtype: torch.dtype | None) -> None:
    """Shard `model` in place over every process of the default process group: each decoder
    layer, each visual encoder, then the root. Make the optimizer afterwards (its parameters
    become sharded `DTensor`s)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns when a unit returns a view: an in-place change of it would skip the unit's
    # backward hook. Encoders return their tokens as views (a reshape of their feature map),
    # and the mixers read them without changing them in place.
    warnings.filterwarnings(
        "ignore",
        message=r"FSDP2-wrapped module \(FSDP\w*Encoder\) returned a view tensor",
        category=UserWarning,
    )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision(compute_dtype)
    visual = getattr(model, "visual", None)
    encoders = list(visual.encoders.values()) if visual is not None else []
    for unit in [*decoder_layers(model.llm), *encoders]:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process the main process's buffers (batch-norm running statistics): FSDP
    leaves buffers to each process, which updates them from its own share of the batch. DDP
    broadcasts them before every forward; this, after every step, keeps the processes' models
    equal, as held-out scoring on every process at once needs, and as a checkpoint (which saves
    a buffer from one process) assumes."""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank holds: its shard of each sharded one, all of the others."""
    from torch.distributed.tensor import DTensor

    total = 0
    for parameter in model.parameters():
        local = parameter.to_local() if isinstance(parameter, DTensor) else parameter
        total += local.numel() * local.element_size()
    return total


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the main process, on the CPU (empty on the others); every
    process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def gathered_copy(model: Any, prepare: Callable[[nn.Module], Any]) -> nn.Module | None:
    """An ordinary (unsharded) copy of a sharded `SphinxModel` on the main process, on the CPU
    (None on the others; every process must call this): built from its config, made like the
    trained one by `prepare` (LoRA adapters, fp32 weights for what trained), then loaded with
    the gathered weights."""
    from sphinx_mllm.pipeline.building import build_model

    state = full_state_dict(model)
    if not state:
        return None
    model_config = model.model_config
    copy = build_model(model_config.replace(**{"llm.pretrained": False}), device="cpu")
    copy.model_config = model_config
    copy.processor = model.processor
    prepare(copy)
    copy.load_state_dict(state)
    return copy


@contextmanager
def evaluating_in_step(model: nn.Module, seed: int) -> Iterator[None]:
    """Evaluate a sharded model on every process at once: its root unit gathered while code
    calls the model's parts directly (generation calls the LLM's decoder and head, not the
    forward that would gather them; the other units gather themselves when called), and the
    same random numbers everywhere (sampled replies must agree, or the processes would run
    different forwards and wait for each other for ever)."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.unshard()
        try:
            with torch.no_grad():
                yield
        finally:
            model.reshard()
