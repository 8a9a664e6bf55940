"""Experiment tracking beside `metrics.jsonl`: TensorBoard event files in `RUN/tensorboard`, and
Weights & Biases when a run asks for it (`trackers: [tensorboard, wandb]`) and it is installed.

    trackers = open_trackers(["tensorboard"], run_dir, resume_step=0, config=run.to_dict())
    trackers.log_step(step_log)              # train/loss, train/lr, train/grad_norm, ...
    trackers.log_eval(500, {"vqa": {"score": 0.61, ...}})   # eval/vqa
    trackers.close()

Only the main process tracks. On resume, TensorBoard discards the events logged after the
restored step (`purge_step`), as `metrics.jsonl` forgets them, so a curve never holds a step twice;
a W&B run resumes under the id kept in `RUN/wandb_run_id`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

Tracker = Literal["tensorboard", "wandb"]
TRACKERS: tuple[str, ...] = get_args(Tracker)
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"
STEP_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_second", "seconds")


class StepRecord(Protocol):
    """What a tracker reads from the trainer's `StepLog`."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_second: float
    seconds: float


class TensorBoardTracker:
    """Scalars of every step and held-out score, as TensorBoard event files."""

    def __init__(self, directory: Path, *, resume_step: int = 0) -> None:
        try:
            import tensorboard  # noqa: F401  (torch's SummaryWriter writes through it)
        except ImportError as error:
            raise ValueError(
                "trackers: 'tensorboard' needs the tensorboard package (pip install tensorboard)"
            ) from error
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops what an interrupted run logged after its last checkpoint
        self.writer = SummaryWriter(
            str(directory), purge_step=resume_step + 1 if resume_step else None
        )

    def log_step(self, log: StepRecord) -> None:
        for name in STEP_SCALARS:
            self.writer.add_scalar(f"train/{name}", float(getattr(log, name)), log.step)

    def log_eval(self, step: int, tasks: Mapping[str, Mapping[str, Any]]) -> None:
        for task, row in tasks.items():
            self.writer.add_scalar(f"eval/{task}", float(row["score"]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """The same scalars in a Weights & Biases run (online or offline as `WANDB_MODE` says)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError as error:
            raise ValueError(
                "trackers: 'wandb' was asked for but the wandb package is not installed "
                "(pip install wandb), or drop it from trackers"
            ) from error
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            id=run_id, resume="allow", dir=str(run_dir), name=run_dir.name, config=dict(config)
        )

    def log_step(self, log: StepRecord) -> None:
        self.run.log({f"train/{name}": getattr(log, name) for name in STEP_SCALARS}, step=log.step)

    def log_eval(self, step: int, tasks: Mapping[str, Mapping[str, Any]]) -> None:
        self.run.log({f"eval/{task}": row["score"] for task, row in tasks.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every tracker of a run, called together; the step of the last logged step is kept so
    that held-out scores can be logged at it."""

    def __init__(self, trackers: Sequence[Any]) -> None:
        self.trackers = list(trackers)
        self.last_step = 0

    def log_step(self, log: StepRecord) -> None:
        self.last_step = log.step
        for tracker in self.trackers:
            tracker.log_step(log)

    def log_eval(self, step: int, tasks: Mapping[str, Mapping[str, Any]]) -> None:
        for tracker in self.trackers:
            tracker.log_eval(step, tasks)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_trackers(
    names: Sequence[str],
    run_dir: Path,
    *,
    resume_step: int = 0,
    config: Mapping[str, Any] | None = None,
) -> Trackers:
    """The trackers `names` asks for, writing under `run_dir`; an unknown name, or wandb
    without the package, is a `ValueError` naming it."""
    unknown = sorted(set(names) - set(TRACKERS))
    if unknown:
        raise ValueError(f"trackers: unknown {unknown}; expected some of {list(TRACKERS)}")
    opened: list[Any] = []
    if "tensorboard" in names:
        opened.append(TensorBoardTracker(run_dir / TENSORBOARD_DIR, resume_step=resume_step))
    if "wandb" in names:
        opened.append(WandbTracker(run_dir, config or {}))
    return Trackers(opened)


class RunTracking:
    """A run's trackers as the trainer's callbacks: opened at the first logged step (so a
    resumed run purges what followed its checkpoint), held-out scores logged at the step they
    follow.

        tracking = RunTracking(["tensorboard"], run_dir, config)
        Trainer(..., on_step=tracking.log_step, evaluate=tracking.scored(evaluate))
    """

    def __init__(
        self, names: Sequence[str], run_dir: Path, config: Mapping[str, Any] | None = None
    ) -> None:
        self.names, self.run_dir, self.config = list(names), run_dir, config
        self.trackers: Trackers | None = None

    def log_step(self, log: StepRecord) -> None:
        if self.trackers is None:
            self.trackers = open_trackers(
                self.names, self.run_dir, resume_step=log.step - 1, config=self.config
            )
        self.trackers.log_step(log)

    def scored(self, evaluate):
        """`evaluate` (returning per-task scores) that also logs what it returns."""

        def evaluate_and_log():
            tasks = evaluate()
            if self.trackers is not None:
                self.trackers.log_eval(self.trackers.last_step, tasks)
            return tasks

        return evaluate_and_log

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
