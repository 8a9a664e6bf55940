"""The trainer: accumulation and data-parallel equivalence, exact resume after SIGKILL, non-finite
losses, corrupt checkpoints, and a short run that learns."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from sphinx_mllm.pipeline.building import build_model, resolve_config
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from sphinx_mllm.pipeline.training.state import list_checkpoints
from sphinx_mllm.pipeline.training.trainer import NonFiniteLossError, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
# The demo's ResNet normalises with BatchNorm, over each micro-batch: accumulated or data-parallel
# steps then differ from one big batch (as in any framework). The equivalence tests use the demo
# with per-sample normalisation, which must give the same steps.
PER_SAMPLE_NORM = {"vision.encoders.0.options.norm_layer": "layernorm2d"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sphinx_mllm.data.cli import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth(root, seed=3, train=12, val=4)
    return root


def _sources(root, tasks=("vqa", "rec")):
    return [DataSource(root / "tasks" / "train" / f"{task}.jsonl", 1.0, root) for task in tasks]


class Crash(Exception):
    pass


def _train(root, run, *, resume=False, crash_after=None, changes=PER_SAMPLE_NORM, **settings):
    """Losses of a run; `crash_after=k` raises after step k (its checkpoint written)."""
    torch.manual_seed(0)
    model = build_model("demo", **changes)
    data = TrainingData.build(model.processor, _sources(root), max_length=256)
    config = TrainConfig(
        **{"stage": "full", "max_steps": 6, "global_batch_size": 8, "lr": 1e-3, **settings}
    )
    losses = []

    def on_step(log):
        losses.append(log.loss)
        if log.step == crash_after:
            raise Crash

    trainer = Trainer(model, data, config, run, resume=resume, progress=False, on_step=on_step)
    with contextlib.suppress(Crash):
        trainer.train()
    return model, losses


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="Unknown stage 'warmup'"):
        TrainConfig(stage="warmup")
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        TrainConfig(max_steps=0)


def test_gradient_accumulation_gives_the_same_steps(synthetic, tmp_path):
    _, whole = _train(synthetic, tmp_path / "a", max_steps=4)
    _, accumulated = _train(synthetic, tmp_path / "b", max_steps=4, micro_batch_size=3)
    torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-5)


def test_resume_continues_exactly(synthetic, tmp_path):
    _, straight = _train(synthetic, tmp_path / "straight", checkpoint_every=2)
    _, first = _train(synthetic, tmp_path / "resumed", crash_after=5, checkpoint_every=2)
    _, second = _train(synthetic, tmp_path / "resumed", resume=True, checkpoint_every=2)
    assert first[:4] + second == straight  # step 5 was lost with the crash and done again
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == [
        "step-000004",
        "step-000006",
    ]


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic, tmp_path):
    torch.manual_seed(0)
    model = build_model("demo")
    data = TrainingData.build(model.processor, _sources(synthetic), max_length=256)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 3 else output

    model.llm.get_decoder().norm.register_forward_hook(poison)
    config = TrainConfig(stage="full", max_steps=6, global_batch_size=8, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4.*step-000002"):
        Trainer(model, data, config, tmp_path, progress=False).train()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    from sphinx_mllm.pipeline.model import SphinxModel

    restored = SphinxModel.from_pretrained(tmp_path / "checkpoints" / "step-000002")
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(synthetic, tmp_path):
    _, straight = _train(synthetic, tmp_path / "straight", checkpoint_every=2)
    _train(synthetic, tmp_path / "run", crash_after=5, checkpoint_every=2, keep_last=3)
    latest = tmp_path / "run" / "checkpoints" / "step-000004" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match=r"step-000004 cannot be loaded"):
        _, resumed = _train(synthetic, tmp_path / "run", resume=True, checkpoint_every=2)
    assert resumed == straight[2:]


def _cli(*args, env=None):
    command = [sys.executable, "-m", "sphinx_mllm.pipeline", *args]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env or os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _losses(run):
    return {
        row["step"]: row["loss"]
        for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    }


def _run_yaml(synthetic, path, steps):
    path.write_text(
        json.dumps(
            {
                "model": resolve_config("demo").replace(**PER_SAMPLE_NORM).to_dict(),
                "data": [
                    {"path": str(synthetic / "tasks/train/vqa.jsonl"), "images": str(synthetic)},
                    {"path": str(synthetic / "tasks/train/rec.jsonl"), "images": str(synthetic)},
                ],
                "train": {
                    "stage": "full",
                    "max_steps": steps,
                    "global_batch_size": 8,
                    "lr": 1e-3,
                    "checkpoint_every": 2,
                    "max_length": 256,
                },
            }
        )
    )
    return path


def test_a_run_killed_with_sigkill_resumes_with_the_same_losses(synthetic, tmp_path):
    config = _run_yaml(synthetic, tmp_path / "run.yaml", 10)
    straight = _cli("train", str(config), "--out", str(tmp_path / "straight"), "--no-progress")
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    killed = _cli("train", str(config), "--out", str(tmp_path / "killed"), "--no-progress")
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    saved = list_checkpoints(tmp_path / "killed")
    assert saved and int(saved[-1].name.split("-")[1]) < 10
    resumed = _cli(
        "train", str(config), "--out", str(tmp_path / "killed"), "--resume", "--no-progress"
    )
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "straight")


def test_two_gloo_processes_follow_the_single_process_loss(synthetic, tmp_path):
    config = _run_yaml(synthetic, tmp_path / "run.yaml", 4)
    single = _cli("train", str(config), "--out", str(tmp_path / "single"), "--no-progress")
    assert single.wait(timeout=300) == 0, single.stdout.read()
    env = os.environ.copy() | {"OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", "29531", "-m", "sphinx_mllm.pipeline", "train", str(config),
        "--out", str(tmp_path / "ddp"), "--no-progress", "--device", "cpu",
        # the processes agree each step on whether time is up, and wait for each other at the
        # held-out scoring points
        "--set", "max_minutes=30", "--set", "eval_every=2",
    ]  # fmt: skip
    ddp = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single_losses, ddp_losses = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert list(ddp_losses) == [1, 2, 3, 4]
    torch.testing.assert_close(
        list(ddp_losses.values()), list(single_losses.values()), rtol=1e-4, atol=1e-5
    )


def test_a_short_demo_run_reduces_the_loss(synthetic, tmp_path):
    _, losses = _train(synthetic, tmp_path, max_steps=30, lr=3e-3, warmup_steps=3, changes={})
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")


def test_text_only_batches_mix_into_pretraining(synthetic, tmp_path):
    """SPHINX keeps language ability with text-only data (RefinedWeb) in pretraining: such
    records form their own global batches, and a pretraining run steps through both kinds."""
    text = tmp_path / "text.jsonl"
    lines = [
        {"id": f"t{i}", "conversations": [
            {"from": "human", "value": f"Continue: the number {i}"},
            {"from": "gpt", "value": f"follows {i - 1} and precedes {i + 1}."},
        ]}
        for i in range(16)
    ]  # fmt: skip
    text.write_text("".join(json.dumps(line) + "\n" for line in lines))
    torch.manual_seed(0)
    model = build_model("demo")
    sources = [*_sources(synthetic, ("vqa",)), DataSource(text, 1.0)]
    data = TrainingData.build(model.processor, sources, max_length=256)
    kinds = [{name.split("/")[-1] for name, _ in items} for _, items in data.batches(4).epoch(0)]
    assert {"text-only"} in kinds and {"image-text"} in kinds and all(len(k) == 1 for k in kinds)

    projector = [p for n, p in model.named_parameters() if "visual" in n and p.requires_grad]
    seen = []

    def on_step(log):
        seen.append(log.loss)

    config = TrainConfig(stage="pretrain", max_steps=len(kinds), global_batch_size=4, lr=1e-3)
    before = [p.detach().clone() for p in projector]
    Trainer(model, data, config, tmp_path / "run", progress=False, on_step=on_step).train()
    assert len(seen) == len(kinds) and all(torch.isfinite(torch.tensor(seen)))
    assert any(not torch.equal(b, p) for b, p in zip(before, projector, strict=True))


def test_unknown_synthetic_settings_are_named(tmp_path):
    from sphinx_mllm.pipeline.training.run import generate_synthetic

    with pytest.raises(ValueError, match=r"\['rounds'\]"):
        generate_synthetic(tmp_path, {"seed": 0, "train": 2, "val": 1, "rounds": 4})
