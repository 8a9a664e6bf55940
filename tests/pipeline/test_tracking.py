"""TensorBoard (and W&B) tracking of a run: the scalars land in event files TensorBoard reads,
and a resumed run's curve holds each step once."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sphinx_mllm.pipeline.training.tracking import TENSORBOARD_DIR, open_trackers
from sphinx_mllm.pipeline.training.trainer import StepLog


def step_log(step: int, loss: float) -> StepLog:
    return StepLog(
        step=step, loss=loss, lr=1e-3, grad_norm=0.5, label_tokens=10, tokens=40,
        tokens_per_second=400.0, seconds=0.1, epoch=0,
    )  # fmt: skip


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    events.Reload()
    return [(event.step, round(event.value, 4)) for event in events.Scalars(tag)]


def test_steps_and_held_out_scores_reach_tensorboard(tmp_path):
    trackers = open_trackers(["tensorboard"], tmp_path)
    for step in (1, 2, 3):
        trackers.log_step(step_log(step, 3.0 - step))
    trackers.log_eval(trackers.last_step, {"vqa": {"score": 0.25}, "rec": {"score": 0.5}})
    trackers.close()
    assert scalars(tmp_path, "train/loss") == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert scalars(tmp_path, "train/lr") == [(1, 0.001), (2, 0.001), (3, 0.001)]
    assert scalars(tmp_path, "eval/vqa") == [(3, 0.25)]
    assert scalars(tmp_path, "eval/rec") == [(3, 0.5)]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    first = open_trackers(["tensorboard"], tmp_path)
    for step in (1, 2, 3, 4):  # a checkpoint at step 2, then a crash after step 4
        first.log_step(step_log(step, 10.0 + step))
    first.close()
    resumed = open_trackers(["tensorboard"], tmp_path, resume_step=2)
    for step in (3, 4, 5):
        resumed.log_step(step_log(step, 20.0 + step))
    resumed.close()
    assert scalars(tmp_path, "train/loss") == [
        (1, 11.0),
        (2, 12.0),
        (3, 23.0),
        (4, 24.0),
        (5, 25.0),
    ]


def test_wandb_logs_offline_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the optional wandb tracker needs the wandb package")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for step in (1, 2):
        trackers = open_trackers(["wandb"], tmp_path, config={"lr": 1e-3})
        trackers.log_step(step_log(step, 1.0))
        trackers.log_eval(step, {"vqa": {"score": 0.5}})
        trackers.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert runs and all(run.name.endswith(run_id) for run in runs)  # resumed, not a new run
    logged = b"".join(path.read_bytes() for run in runs for path in run.glob("*.wandb"))
    assert b"train/loss" in logged and b"eval/vqa" in logged


def test_unknown_trackers_are_named(tmp_path):
    with pytest.raises(ValueError, match="tensorbord"):
        open_trackers(["tensorbord"], tmp_path)
