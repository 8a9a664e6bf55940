"""Training stages as freeze sets over `SphinxModel` parameter names (shell wildcards).

| stage | trains | SPHINX / LLaVA name |
|---|---|---|
| align | the mixer: projectors and start/end vectors | mm_stage1 |
| pretrain | the mixer and the LLM (encoders frozen) | pre-training |
| finetune | the mixer and the LLM (encoders frozen) | mm_stage2 |
| lora | the mixer and LoRA adapters on the LLM's linear layers | - |
| full | everything, encoders included (the demo trains from scratch) | - |

`pretrain` and `finetune` freeze alike; they differ in their data (pre-training mixes text-only
batches in). A custom stage is a list of patterns:
`Stage("mine", ("visual.mixer.*", "llm.lm_head.*"))`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Stage:
    """Which parameters train: those matching `trainable`; with `lora_rank`, LoRA adapters of
    that rank are added to the LLM's `lora_targets` linear layers (their base weights frozen)."""

    name: str
    trainable: tuple[str, ...]
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def trains(self, parameter_name: str) -> bool:
        return any(fnmatch.fnmatchcase(parameter_name, pattern) for pattern in self.trainable)


STAGES: dict[str, Stage] = {
    "align": Stage("align", ("visual.mixer.*",)),
    "pretrain": Stage("pretrain", ("visual.mixer.*", "llm.*")),
    "finetune": Stage("finetune", ("visual.mixer.*", "llm.*")),
    "lora": Stage("lora", ("visual.mixer.*",), lora_rank=16),
    "full": Stage("full", ("*",)),
}


def get_stage(stage: str | Stage) -> Stage:
    if isinstance(stage, Stage):
        return stage
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; expected one of {sorted(STAGES)} or a Stage")
    return STAGES[stage]


def trainable_parameter_count(model: nn.Module, stage: str | Stage) -> int:
    """Parameters that would train in `stage`, counted without changing the model (LoRA
    adapters counted from the shapes of the layers they would wrap)."""
    stage = get_stage(stage)
    count = sum(p.numel() for name, p in model.named_parameters() if stage.trains(name))
    if stage.lora_rank is not None:
        count += sum(
            stage.lora_rank * (module.in_features + module.out_features)
            for name, module in model.named_modules()
            if name.startswith("llm.")
            and isinstance(module, nn.Linear)
            and name.rsplit(".", 1)[-1] in stage.lora_targets
        )
    return count


def apply_stage(model: nn.Module, stage: str | Stage) -> list[str]:
    """Set `requires_grad` by the stage's patterns (encoders through their own freeze, so a
    frozen encoder runs without autograd); returns the names of the trainable parameters.
    LoRA adapters are added by the trainer (`peft`) before this is applied."""
    stage = get_stage(stage)
    trainable = []
    for name, parameter in model.named_parameters():
        trains = stage.trains(name) or (stage.lora_rank is not None and "lora_" in name)
        parameter.requires_grad_(trains)
        if trains:
            trainable.append(name)
    visual = getattr(model, "visual", None)
    for stream, encoder in visual.encoders.items() if visual is not None else ():
        prefix = f"visual.encoders.{stream}."
        if any(name.startswith(prefix) for name in trainable):
            encoder.unfreeze()
            for name, parameter in encoder.named_parameters():
                parameter.requires_grad_(f"{prefix}{name}" in trainable)
        else:
            encoder.freeze()
    return trainable
