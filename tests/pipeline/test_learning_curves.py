"""Held-out scores every `eval_every` steps: when the trainer calls the evaluator, what it
appends to `eval_curve.jsonl` (kept consistent on resume), and what a whole session leaves in
its run directory."""

import contextlib
import json
import math

import pytest
import torch

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from sphinx_mllm.pipeline.training.plots import curve_table, read_curve
from sphinx_mllm.pipeline.training.trainer import EVAL_CURVE_FILE, TrainConfig, Trainer


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sphinx_mllm.data.cli import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth(root, seed=5, train=8, val=3)
    return root


class Crash(Exception):
    pass


def _trainer(root, run_dir, calls, *, resume=False, crash_after=None, max_steps=6):
    torch.manual_seed(0)
    model = build_model("demo")
    sources = [DataSource(root / "tasks" / "train" / "vqa.jsonl", 1.0, root)]
    data = TrainingData.build(model.processor, sources, max_length=256)
    config = TrainConfig(
        stage="full", max_steps=max_steps, global_batch_size=4, lr=1e-3, eval_every=2,
        checkpoint_every=2,
    )  # fmt: skip

    def evaluate():
        calls.append(model.training)
        return {"vqa": {"metric": "vqa", "count": 3, "score": len(calls) / 10}}

    def on_step(log):
        if log.step == crash_after:
            raise Crash

    return Trainer(
        model, data, config, run_dir, resume=resume, progress=False, on_step=on_step,
        evaluate=evaluate,
    ), model  # fmt: skip


def _curve_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / EVAL_CURVE_FILE).open()]


def test_the_evaluator_runs_every_eval_every_steps_in_eval_mode(synthetic, tmp_path):
    calls = []
    trainer, model = _trainer(synthetic, tmp_path, calls)
    trainer.train()
    assert calls == [False, False, False]  # steps 2, 4, 6, each with the model in eval mode
    assert model.training  # and back in train mode afterwards
    assert _curve_steps(tmp_path) == [2, 4, 6]
    steps, scores = read_curve(tmp_path / EVAL_CURVE_FILE)
    assert steps == [2, 4, 6] and scores == {"vqa": [0.1, 0.2, 0.3]}


def test_a_resumed_run_forgets_scores_after_its_checkpoint(synthetic, tmp_path):
    calls = []
    trainer, _ = _trainer(synthetic, tmp_path, calls, crash_after=5)
    with contextlib.suppress(Crash):
        trainer.train()
    assert _curve_steps(tmp_path) == [2, 4]
    # a score logged after the last checkpoint (step 4), as a crash can leave one behind
    with (tmp_path / EVAL_CURVE_FILE).open("a") as out:
        out.write(json.dumps({"step": 6, "seconds": 0, "tasks": {}}) + "\n")
    trainer, _ = _trainer(synthetic, tmp_path, calls, resume=True)
    trainer.train()
    assert _curve_steps(tmp_path) == [2, 4, 6]


def test_eval_every_must_not_be_negative():
    with pytest.raises(ValueError, match="eval_every must be 0"):
        TrainConfig(eval_every=-1)


def test_the_curve_table_has_a_row_per_step_and_a_column_per_task(tmp_path):
    path = tmp_path / EVAL_CURVE_FILE
    rows = [
        {"step": 10, "seconds": 1, "tasks": {"vqa": {"score": 0.25}}},
        {"step": 20, "seconds": 1, "tasks": {"vqa": {"score": 0.5}, "rec": {"score": 0.125}}},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    steps, scores = read_curve(path)
    assert steps == [10, 20] and scores["vqa"] == [0.25, 0.5]
    assert math.isnan(scores["rec"][0]) and scores["rec"][1] == 0.125
    lines = curve_table(path).splitlines()
    assert lines[0].split() == ["step", "rec", "vqa"]
    assert lines[1].split() == ["10", "nan", "0.250"]
    assert lines[2].split() == ["20", "0.125", "0.500"]


def test_a_session_leaves_curves_scores_and_figures(synthetic, tmp_path, capsys):
    from sphinx_mllm.pipeline.training.session import run_training

    def source(split, task):
        return {"path": str(synthetic / f"tasks/{split}/{task}.jsonl"), "images": str(synthetic)}

    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(
            {
                "data": [source("train", "rec")],
                "eval": [source("val", task) for task in ("vqa", "rec")],
                "train": {"stage": "full", "max_steps": 4, "global_batch_size": 4, "lr": 1e-3,
                          "eval_every": 2, "max_length": 256},
                "curve_limit": 2,
                "eval_limit": 3,
            }
        )
    )  # fmt: skip
    out = tmp_path / "run"
    summary = run_training(
        config_file=config, preset=None, data=[], images=[], eval_data=[], out=out,
        max_steps=None, settings=[], resume=False, device="cpu", progress=False,
    )  # fmt: skip
    assert set(summary) == {"vqa", "rec"} and summary["rec"]["count"] == 3
    assert summary["rec"]["metric"] == "rec" and 0.0 <= summary["rec"]["miou"] <= 1.0
    records = [json.loads(line) for line in (out / EVAL_CURVE_FILE).open()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(set(r["tasks"]) == {"vqa", "rec"} for r in records)
    assert all(r["tasks"]["rec"]["count"] == 2 for r in records)  # curve_limit per source
    for name in ("eval.json", "training_curve.png", "eval_boxes.png"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "held-out score by step" in printed and "step 2: held-out" in printed
    # the same steps and scores in TensorBoard's event files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)
    assert [e.step for e in events.Scalars("eval/rec")] == [2, 4]


def test_a_run_fine_tunes_the_weights_of_a_checkpoint(synthetic, tmp_path):
    """`model: <checkpoint directory>` (an imported release, an earlier run's model) starts the
    run from its weights, not from a fresh build of its config."""
    import torch

    from sphinx_mllm.pipeline import SphinxModel, build_model
    from sphinx_mllm.pipeline.training.session import run_training

    torch.manual_seed(7)
    start = build_model("demo", **{"llm.overrides.num_hidden_layers": 2})
    start.save_pretrained(tmp_path / "start")
    config = tmp_path / "run.yaml"
    vqa = {"path": str(synthetic / "tasks/train/vqa.jsonl"), "images": str(synthetic)}
    config.write_text(
        json.dumps(
            {
                "model": str(tmp_path / "start"),
                "data": [vqa],
                "train": {"stage": "full", "max_steps": 1, "global_batch_size": 2, "lr": 1e-9,
                          "max_length": 256},
                "trackers": [],
            }
        )
    )  # fmt: skip
    run_training(
        config_file=config, preset=None, data=[], images=[], eval_data=[], out=tmp_path / "run",
        max_steps=None, settings=[], resume=False, device="cpu", progress=False,
    )  # fmt: skip
    tuned = SphinxModel.from_pretrained(tmp_path / "run" / "model").state_dict()
    fresh = build_model(start.model_config).state_dict()
    name = "llm.model.layers.0.self_attn.q_proj.weight"
    assert (tuned[name] - start.state_dict()[name]).abs().max() < 1e-6
    assert (fresh[name] - start.state_dict()[name]).abs().max() > 1e-2
