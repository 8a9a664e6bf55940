"""The trainer: stages, AdamW with warmup and cosine decay, gradient accumulation, clipping,
bf16 autocast with fp32 weights for what trains, DDP or FSDP2 through torch.distributed, atomic
checkpoints every N steps with exact resume, held-out scores every M steps (learning curves),
and a run directory that shows progress.

    trainer = Trainer(model, data, TrainConfig(stage="finetune", max_steps=1000), "runs/a")
    result = trainer.train()           # resumes from runs/a/checkpoints when resume=True

`strategy` says how several processes share the work. `ddp`: each holds the whole model and
optimizer, gradients are all-reduced; checkpoints are ordinary model checkpoints plus the
trainer's state (`training.state`). `fsdp`: parameters, gradients and optimizer state are sharded
over the processes (`training.fsdp`); checkpoints are sharded (`training.sharded_checkpoints`),
load into any number of processes, and `sphinx-pipeline consolidate` makes an ordinary one of
them. One process trains alike with either (with `fsdp` it writes sharded checkpoints).

The loss of a step is the mean over every label token of the global batch, however it is split
into processes and micro-batches: each micro-batch's mean loss is weighted by its share of the
global batch's label tokens, so one process with accumulation and N processes give the same
gradients.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import torch
from pydantic import AfterValidator, Field, StrictBool, StrictInt, StrictStr, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError
from torch import nn

from sphinx_mllm.core.outputs import atomic_file
from sphinx_mllm.pipeline.config import CONFIG, Number, PositiveInt, config_errors, field_problem
from sphinx_mllm.pipeline.stages import STAGES, Stage, apply_stage, get_stage
from sphinx_mllm.pipeline.training import fsdp
from sphinx_mllm.pipeline.training.data import TrainingData
from sphinx_mllm.pipeline.training.distributed import Distributed, gradient_sync
from sphinx_mllm.pipeline.training.rank_shares import RankShare, rank_shares
from sphinx_mllm.pipeline.training.sharded_checkpoints import (
    load_latest_sharded_checkpoint,
    save_sharded_checkpoint,
)
from sphinx_mllm.pipeline.training.state import (
    TrainerState,
    list_checkpoints,
    load_latest_checkpoint,
    save_training_checkpoint,
)
from sphinx_mllm.pipeline.training.streaming import StreamedData
from sphinx_mllm.pipeline.training.unused_parameters import needs_unused_parameter_search

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Strategy = Literal["ddp", "fsdp"]
METRICS_FILE = "metrics.jsonl"
EVAL_CURVE_FILE = "eval_curve.jsonl"  # {"step", "seconds", "tasks": {task: {"score", ...}}}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def _off_or_positive(value: int) -> int:
    if value < 0:
        message = "must be 0 (off) or positive, got {got}"
        raise PydanticCustomError("off_or_positive", message, {"got": value})
    return value


OffOrCount = Annotated[StrictInt, AfterValidator(_off_or_positive)]  # 0 = off
NonNegative = Annotated[Number, Field(ge=0)]


@config_errors
@pydantic_dataclass(config=CONFIG)
class TrainConfig:
    """How to train. `global_batch_size` samples per optimisation step over all processes;
    `micro_batch_size` (per process, 0 = all at once) sets gradient accumulation;
    `max_minutes` (0 = none) ends the run early, with a checkpoint, when time is up;
    `eval_every` (0 = never) scores the held-out data every so many steps, for learning curves
    (the time it takes does not count against `max_minutes`). A stage that is not one of
    `STAGES` needs `trainable` patterns. `strategy` shares the work of several processes:
    `ddp` (replicas) or `fsdp` (sharded, for models a replica does not fit; see the module
    docstring). Checked when made (a `ConfigError` names the field)."""

    stage: StrictStr = "finetune"
    trainable: list[StrictStr] | None = None
    max_steps: PositiveInt = 1000
    max_minutes: NonNegative = 0.0
    global_batch_size: PositiveInt = 32
    micro_batch_size: Annotated[StrictInt, Field(ge=0)] = 0
    lr: Annotated[Number, Field(gt=0)] = 2e-5
    min_lr: NonNegative = 0.0
    warmup_steps: Annotated[StrictInt, Field(ge=0)] = 0
    weight_decay: NonNegative = 0.0
    betas: tuple[Annotated[Number, Field(ge=0, lt=1)], Annotated[Number, Field(ge=0, lt=1)]] = (
        0.9,
        0.95,
    )
    clip_grad_norm: NonNegative = 2.0  # 0 = no clipping
    precision: Precision = "auto"
    strategy: Strategy = "ddp"
    gradient_checkpointing: StrictBool = False
    max_length: PositiveInt = 1024
    checkpoint_every: OffOrCount = 0
    keep_last: Annotated[StrictInt, Field(ge=0)] = 2  # 0 = keep every checkpoint
    eval_every: OffOrCount = 0
    seed: StrictInt = 0
    lora_rank: PositiveInt = 16
    lora_alpha: PositiveInt = 32

    @model_validator(mode="after")
    def _known_stage(self) -> TrainConfig:
        if self.stage not in STAGES and self.trainable is None:
            raise field_problem(
                "stage",
                f"Unknown stage {self.stage!r}; expected one of {sorted(STAGES)} (or give "
                "trainable patterns for a custom stage)",
                self.stage,
            )
        return self

    @property
    def resolved_stage(self) -> Stage:
        if self.trainable is not None:
            return Stage(self.stage, tuple(self.trainable))
        stage = get_stage(self.stage)
        if stage.lora_rank is not None:
            stage = Stage(stage.name, stage.trainable, self.lora_rank, stage.lora_targets)
        return stage


def prepare_model(model: nn.Module, config: TrainConfig) -> list[str]:
    """Make `model` ready for `config`'s stage: LoRA adapters when the stage has them, what
    trains set by the stage, fp32 master weights for it; returns the names of what trains. A
    model rebuilt to load a sharded checkpoint goes through the same, so the names match."""
    stage = config.resolved_stage
    if stage.lora_rank is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=stage.lora_rank,
            lora_alpha=config.lora_alpha,
            target_modules=list(stage.lora_targets),
            lora_dropout=0.0,
        )
        model.llm = get_peft_model(model.llm, lora)
    trainable = apply_stage(model, stage)
    if not trainable:
        raise ValueError(f"Stage {stage.name!r} trains no parameter of this model")
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return trainable


@dataclass
class StepLog:
    """One optimisation step, as appended to metrics.jsonl."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    label_tokens: int
    tokens: int
    tokens_per_second: float
    seconds: float
    epoch: int


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    history: list[StepLog] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_by: str = "steps"


class Trainer:
    """Trains a `SphinxModel` on `TrainingData` into the run directory `run_dir`.

    `evaluate`, called with the model in eval mode every `config.eval_every` steps, returns
    per-task held-out scores (`EvalReport.by_task()`); each call is appended to
    `RUN/eval_curve.jsonl`. It runs on the main process, or with a sharded model (`fsdp`) on
    every process in step (each computes the same; the model's parts gather themselves)."""

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData | StreamedData,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        distributed: Distributed | None = None,
        progress: bool = True,
        on_step: Callable[[StepLog], None] | None = None,
        evaluate: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.dist = distributed or Distributed(0, 1, 0, model.device)
        self.progress = progress and self.dist.is_main
        self.on_step = on_step
        self.evaluate = evaluate
        # one process has nothing to shard with: it trains the model as it is
        self.sharded = config.strategy == "fsdp" and self.dist.enabled
        if config.global_batch_size % self.dist.world_size:
            raise ValueError(
                f"global_batch_size {config.global_batch_size} is not divisible by the "
                f"{self.dist.world_size} processes"
            )

    # -- set-up ----------------------------------------------------------------------------------

    def _prepare_model(self) -> list[str]:
        trainable = prepare_model(self.model, self.config)
        if self.config.gradient_checkpointing:
            llm = self.model.llm  # transformers >= 5.24 renamed gradient_* to activation_*
            enable = getattr(llm, "activation_checkpointing_enable", None)
            (enable or llm.gradient_checkpointing_enable)()
        if self.sharded:  # before the optimizer: the parameters become sharded DTensors
            fsdp.shard_model(self.model, self.dist.device, compute_dtype=self._compute_dtype())
        return trainable

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                # no weight decay on biases and norms (one-dimensional parameters)
                (no_decay if parameter.ndim < 2 else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            [group for group in groups if group["params"]],
            lr=self.config.lr,
            betas=self.config.betas,
        )

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=self.config.warmup_steps,
            num_training_steps=self.config.max_steps,
            min_lr=self.config.min_lr,
        )

    def _compute_dtype(self) -> torch.dtype | None:
        """bfloat16 for `bf16` (`auto`: where the GPU supports it; fp32 on the CPU)."""
        precision = self.config.precision
        device = self.dist.device
        if precision == "auto":
            supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
            precision = "bf16" if supported else "fp32"
        return torch.bfloat16 if precision == "bf16" else None

    def _autocast(self):
        dtype = self._compute_dtype()
        return nullcontext() if dtype is None else torch.autocast(self.dist.device.type, dtype)

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        config = self.config
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self._prepare_model()
        optimizer = self._optimizer()
        scheduler = self._scheduler(optimizer)
        state = self._restore(optimizer, scheduler) if self.resume else TrainerState()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, EVAL_CURVE_FILE):
            self._truncate_log(name, state.step)
        batches = self.data.batches(config.global_batch_size, seed=config.seed)
        wrapped = self._wrap(batches)
        wrapped.train()
        bar = self._progress_bar(state.step)
        history: list[StepLog] = []
        last_checkpoint = None
        deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else math.inf
        shares = rank_shares(
            self.data,
            batches,
            global_batch_size=config.global_batch_size,
            seed=config.seed,
            dist=self.dist,
            start=(state.epoch, state.batch_in_epoch),
        )
        try:
            while state.step < config.max_steps and not self._time_is_up(deadline):
                share = next(shares)
                log = self._step(wrapped, optimizer, scheduler, share, state)
                state.step += 1
                state.epoch, state.batch_in_epoch = share.next_position
                state.tokens_seen += log.tokens
                history.append(log)
                self._record(log, bar)
                if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    last_checkpoint = self._checkpoint(optimizer, scheduler, state)
                if config.eval_every and state.step % config.eval_every == 0:
                    deadline += self._score_held_out(wrapped, state.step, bar)
            if config.checkpoint_every and state.step % config.checkpoint_every:
                last_checkpoint = self._checkpoint(optimizer, scheduler, state)
        finally:
            shares.close()  # stops a streamed loader's workers
            if bar is not None:
                bar.close()
        final_loss = history[-1].loss if history else float("nan")
        stopped = "time" if state.step < config.max_steps else "steps"
        return TrainResult(state.step, final_loss, history, last_checkpoint, stopped)

    def _restore(self, optimizer, scheduler) -> TrainerState:
        if self.config.strategy == "fsdp":
            restored = load_latest_sharded_checkpoint(
                self.run_dir,
                self.model,
                optimizer,
                scheduler,
                dist=self.dist,
                seed=self.config.seed,
            )
        else:
            restored = load_latest_checkpoint(self.run_dir, self.model, optimizer, scheduler)
        if restored is None:
            raise FileNotFoundError(
                f"resume: {self.run_dir} holds no loadable checkpoint (checkpoints/step-*)"
            )
        return restored

    def _wrap(self, batches) -> nn.Module:
        """The model the steps run: sharded in place (`fsdp`), in DDP, or as it is."""
        if self.sharded or not self.dist.enabled:
            return self.model
        data_types = {data_type for data_type, _ in batches.epoch(0)}
        search = needs_unused_parameter_search(self.model, data_types)
        return self.dist.wrap(self.model, find_unused_parameters=search)

    def _time_is_up(self, deadline: float) -> bool:
        """Whether `max_minutes` is spent; decided by all processes together, so that none
        stops a step before the others."""
        if math.isinf(deadline):
            return False
        return self.dist.sum(float(time.monotonic() >= deadline)) > 0

    def _score_held_out(self, model: nn.Module, step: int, bar) -> float:
        """Score the held-out data (the main process; every process of a sharded model) and
        append it to the curve; returns the seconds it took, which every process waited."""
        started = time.monotonic()
        if self.evaluate is not None and (self.dist.is_main or self.sharded):
            self.model.eval()
            try:
                seed = self.config.seed + step
                with fsdp.evaluating_in_step(self.model, seed) if self.sharded else nullcontext():
                    tasks = self.evaluate()
            finally:
                model.train()
        if self.evaluate is not None and self.dist.is_main:
            seconds = time.monotonic() - started
            record = {"step": step, "seconds": round(seconds, 2), "tasks": tasks}
            with (self.run_dir / EVAL_CURVE_FILE).open("a") as out:
                out.write(json.dumps(record) + "\n")
            scores = " ".join(f"{task} {row['score']:.2f}" for task, row in tasks.items())
            message = f"step {step}: held-out {scores} ({seconds:.0f} s)"
            if bar is not None:
                bar.write(message)
            else:
                print(message, flush=True)
        self.dist.barrier()
        return time.monotonic() - started

    def _step(self, model, optimizer, scheduler, share: RankShare, state: TrainerState) -> StepLog:
        started = time.perf_counter()
        batch, total_labels = share.batch, share.label_tokens
        rows = len(batch.tasks)
        micro = self.config.micro_batch_size or rows
        # every process runs as many micro-batches as the largest share needs, so that their
        # collectives (FSDP's gathers, DDP's final reduction) stay in step; a process with a
        # shorter share runs its first micro-batch again with weight 0 to make up the count
        largest = -(-share.global_rows // self.dist.world_size)
        count = max(1, -(-largest // micro))
        chunks = batch.split(min(count, rows))
        chunks += [chunks[0]] * (count - len(chunks))
        loss_sum = 0.0
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            padding = index >= min(count, rows)
            with gradient_sync(model, enabled=last):
                with self._autocast():
                    output = model(
                        chunk.input_ids.to(self.dist.device),
                        _to(chunk.pixel_values, self.dist.device),
                        chunk.attention_mask.to(self.dist.device),
                        chunk.labels.to(self.dist.device),
                        return_logits=False,
                    )
                weight = 0.0 if padding else chunk.num_label_tokens / max(total_labels, 1)
                # DDP and FSDP average gradients over the processes: undo it, the weights sum
                (output.loss * weight * self.dist.world_size).backward()
            loss_sum += float(output.loss.detach()) * weight
        loss = self.dist.sum(loss_sum)
        if not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            previous = self._latest_checkpoint_name()
            raise NonFiniteLossError(
                f"The loss is {loss} at step {state.step + 1}; training stopped before the "
                f"update. The last good checkpoint is {previous} (resume from it with a lower "
                "learning rate or check the data)"
            )
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        # with sharded gradients (DTensors) the norm is the whole gradient's, a DTensor too
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.clip_grad_norm or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if self.sharded:
            fsdp.broadcast_buffers(self.model)
        tokens = int(self.dist.sum(batch.num_tokens))
        seconds = time.perf_counter() - started
        return StepLog(
            step=state.step + 1,
            loss=loss,
            lr=lr,
            grad_norm=float(norm),
            label_tokens=total_labels,
            tokens=tokens,
            tokens_per_second=tokens / seconds,
            seconds=seconds,
            epoch=share.epoch,
        )

    # -- what a run leaves behind ----------------------------------------------------------------

    def trained_model(self) -> nn.Module | None:
        """The trained model as an ordinary `SphinxModel` on the main process (None on the
        others). A sharded model is gathered into a copy built on the CPU, so every process
        must call this; the sharded one is of no use afterwards."""
        if not self.sharded:
            return self.model if self.dist.is_main else None
        return fsdp.gathered_copy(self.model, lambda copy: prepare_model(copy, self.config))

    def _checkpoint(self, optimizer, scheduler, state: TrainerState) -> Path | None:
        if self.config.strategy == "fsdp":
            return save_sharded_checkpoint(
                self.run_dir,
                self.model,
                optimizer,
                scheduler,
                state,
                train_config=asdict(self.config),
                dist=self.dist,
                keep_last=self.config.keep_last,
            )
        path = None
        if self.dist.is_main:
            path = save_training_checkpoint(
                self.run_dir,
                self.model,
                optimizer,
                scheduler,
                state,
                keep_last=self.config.keep_last,
            )
        self.dist.barrier()
        return path

    def _latest_checkpoint_name(self) -> str:
        found = list_checkpoints(self.run_dir)
        return str(found[-1]) if found else "none (no checkpoint was written yet)"

    def _truncate_log(self, name: str, step: int) -> None:
        """On resume, forget logged steps after the restored one (they will be logged again).
        A torn last line (a crash mid-write) is dropped; a corrupt line before it is an error
        naming the file and line."""
        path = self.run_dir / name
        if not self.dist.is_main or not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                logged = int(record.get("step", 0))
            except (ValueError, TypeError, AttributeError) as error:
                if number == len(lines):
                    break  # torn while it was being written
                raise ValueError(f"{path}, line {number}: not a step record ({error})") from error
            if logged <= step:
                kept.append(line)
        with atomic_file(path) as out:
            out.write("".join(line + "\n" for line in kept))

    def _record(self, log: StepLog, bar) -> None:
        if self.dist.is_main:
            with (self.run_dir / METRICS_FILE).open("a") as out:
                out.write(json.dumps(asdict(log)) + "\n")
            if bar is not None:
                bar.set_postfix(
                    loss=f"{log.loss:.4f}",
                    lr=f"{log.lr:.2e}",
                    tok_s=f"{log.tokens_per_second:,.0f}",
                    refresh=False,
                )
                bar.update(1)
        if self.on_step is not None:
            self.on_step(log)

    def _progress_bar(self, initial: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.max_steps, initial=initial, desc="train", unit="step")


def _to(pixels: list[torch.Tensor] | None, device: torch.device):
    return None if pixels is None else [views.to(device) for views in pixels]
