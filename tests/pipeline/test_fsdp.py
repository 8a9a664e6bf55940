"""FSDP2 training on two gloo processes: the same steps as one process with half the parameters
per process, sharded checkpoints that resume exactly after SIGKILL and on another number of
processes (a streamed-data run killed under torchrun resumes in one process), ignored when
incomplete, and `consolidate` into an ordinary checkpoint with the
trained model's logits. Also: the `strategy` setting, and when DDP must search for parameters
a step leaves without a gradient.

The two-process run of reference is this file run under torchrun (`_worker`, at the end): it
trains with the `Trainer` and saves its losses and the logits of the trained (still sharded)
model on one batch.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sphinx_mllm.pipeline.building import build_model, resolve_config
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from sphinx_mllm.pipeline.training.state import list_checkpoints
from sphinx_mllm.pipeline.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
# the demo with two decoder layers, and per-sample normalisation, so that splitting the batch
# over processes changes nothing
DEMO = {"vision.encoders.0.options.norm_layer": "layernorm2d", "llm.overrides.num_hidden_layers": 2}
STEPS = 4
TRAIN = {
    "stage": "full",  # encoders train too: every unit of the model is sharded and learns
    "max_steps": STEPS,
    "global_batch_size": 4,
    "micro_batch_size": 1,  # two micro-batches per process: gradient sync on the last only
    "gradient_checkpointing": True,
    "lr": 1e-3,
    "checkpoint_every": 2,
    "keep_last": 0,
    "max_length": 256,
    "strategy": "fsdp",
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sphinx_mllm.data.cli import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth(root, seed=3, train=12, val=4)
    return root


@pytest.fixture(scope="module")
def run_yaml(synthetic, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    sources = [
        {"path": str(synthetic / f"tasks/train/{task}.jsonl"), "images": str(synthetic)}
        for task in ("vqa", "rec")
    ]
    model = resolve_config("demo").replace(**DEMO).to_dict()
    path.write_text(json.dumps({"model": model, "data": sources, "train": TRAIN}))
    return path


@pytest.fixture(scope="module")
def reference(run_yaml, tmp_path_factory):
    """The uninterrupted two-process run: its directory, losses and logits."""
    run = tmp_path_factory.mktemp("reference") / "run"
    command = [*_torchrun(), str(Path(__file__)), str(run_yaml), str(run)]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return run, json.loads((run / "result.json").read_text()), load_file(run / "logits.safetensors")


def _torchrun() -> list[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return os.environ.copy() | {"OMP_NUM_THREADS": "1"}


def _one_process(synthetic, run: Path, *, resume: bool, **changes) -> list[float]:
    """Losses of a run in this process (no process group), as the worker builds it."""
    torch.manual_seed(0)
    model = build_model(resolve_config("demo").replace(**DEMO))
    sources = [
        DataSource(synthetic / f"tasks/train/{task}.jsonl", 1.0, synthetic)
        for task in ("vqa", "rec")
    ]
    data = TrainingData.build(model.processor, sources, max_length=TRAIN["max_length"])
    losses: list[float] = []
    config = TrainConfig(**(TRAIN | changes))
    trainer = Trainer(
        model, data, config, run, resume=resume, progress=False,
        on_step=lambda log: losses.append(log.loss),
    )  # fmt: skip
    trainer.train()
    return losses


def _resumable_copy(reference_run: Path, run: Path, step: int) -> None:
    """A run directory holding the reference's checkpoint of `step` only."""
    name = f"step-{step:06d}"
    shutil.copytree(reference_run / "checkpoints" / name, run / "checkpoints" / name)


def test_strategy_is_a_checked_train_setting():
    from sphinx_mllm.pipeline.training.run import RunConfig

    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(strategy="zero3")
    assert RunConfig().with_settings(["strategy=fsdp"]).train.strategy == "fsdp"
    assert RunConfig.from_dict({"train": {"strategy": "fsdp"}}).train.strategy == "fsdp"


def test_two_fsdp_processes_follow_one_process(synthetic, reference, tmp_path):
    _, result, _ = reference
    single = _one_process(synthetic, tmp_path / "single", resume=False, strategy="ddp")
    assert len(result["losses"]) == STEPS
    torch.testing.assert_close(result["losses"], single, rtol=1e-4, atol=1e-5)
    # every unit is sharded, the encoders too: a process holds half of the parameters
    whole, held = result["model_bytes"], result["parameter_bytes_per_process"]
    assert whole / 2 <= held < 1.01 * whole / 2


def test_ddp_searches_for_unused_parameters_only_when_a_step_leaves_one_out(tiny):
    from sphinx_mllm.pipeline.stages import apply_stage
    from sphinx_mllm.pipeline.training.unused_parameters import (
        needs_unused_parameter_search,
        unused_visual_parameters,
    )

    model = build_model(tiny())  # a tiny CLIP ViT and a tiny DINOv2
    apply_stage(model, "finetune")  # encoders frozen, the mixer trains
    assert not needs_unused_parameter_search(model, ["image-text"])
    assert needs_unused_parameter_search(model, ["image-text", "text-only"])  # mixer idle
    apply_stage(model, "full")  # CLIP's output projection trains but makes no token
    assert unused_visual_parameters(model) == ["visual.encoders.tiny_clip_vit.model.proj"]
    assert needs_unused_parameter_search(model, ["image-text"])
    demo = build_model("demo")
    apply_stage(demo, "full")
    assert not needs_unused_parameter_search(demo, ["image-text"])


def test_two_processes_checkpoint_resumes_in_one_past_incomplete_ones(
    synthetic, reference, tmp_path
):
    reference_run, result, _ = reference
    sharded = result["losses"]
    run = tmp_path / "run"
    _resumable_copy(reference_run, run, 2)
    checkpoints = run / "checkpoints"
    # what a kill mid-write leaves: a hidden partial directory
    shutil.copytree(reference_run / "checkpoints/step-000004", checkpoints / ".step-000004.partial")
    # and a step directory that lost a shard (a disk that failed it): skipped with a warning
    broken = checkpoints / "step-000003"
    shutil.copytree(reference_run / "checkpoints/step-000004", broken)
    next((broken / "weights").glob("shard-00002-*.safetensors")).unlink()
    with pytest.warns(RuntimeWarning, match=r"step-000003 cannot be loaded .*incomplete"):
        resumed = _one_process(synthetic, run, resume=True)
    torch.testing.assert_close(resumed, sharded[2:], rtol=1e-4, atol=1e-5)
    assert not (checkpoints / ".step-000004.partial").exists()  # removed by the next checkpoint
    state = json.loads((checkpoints / "step-000004/trainer/state.json").read_text())
    assert state["world_size"] == 1 and state["trainer"]["step"] == STEPS


def test_consolidate_gives_the_trained_model(reference, tmp_path):
    from sphinx_mllm.pipeline.cli import app
    from sphinx_mllm.pipeline.model import SphinxModel

    reference_run, _, saved = reference
    out = tmp_path / "model"
    checkpoint = reference_run / "checkpoints" / f"step-{STEPS:06d}"
    result = CliRunner().invoke(app, ["consolidate", str(checkpoint), str(out)])
    assert result.exit_code == 0, result.output
    model = SphinxModel.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(saved["input_ids"], saved["pixel_values"], saved["attention_mask"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-4, atol=1e-5)


def test_consolidate_refuses_what_it_cannot_read_or_did_not_write(reference, tmp_path, capsys):
    from sphinx_mllm.pipeline.cli import main

    reference_run, _, _ = reference
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    checkpoint = str(reference_run / "checkpoints" / "step-000002")
    for args, message in [
        ([str(reference_run), str(tmp_path / "out")], "sharded-checkpoint.json is missing"),
        ([checkpoint, str(mine), "--force"], "is not an earlier output of sphinx-pipeline"),
        ([checkpoint, str(mine)], "exists; pass --force"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(["consolidate", *args])
        error = capsys.readouterr().err
        assert exited.value.code == 2 and message in error, error
        assert len(error.strip().splitlines()) == 1
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "out").exists()


def test_a_streamed_fsdp_run_killed_with_sigkill_resumes_in_one_process(run_yaml, tmp_path):
    """The issue's whole path: `torchrun ... train run.yaml` with FSDP on streamed data,
    SIGKILL mid-run, then `train --resume` in one process: the losses of an uninterrupted
    streamed run."""
    run = tmp_path / "run"
    streamed = ["--set", "data_loading=streamed", "--set", "data_workers=1"]

    def train(launcher: list[str], *options: str, out: Path = run) -> list[str]:
        return [*launcher, "-m", "sphinx_mllm.pipeline", "train", str(run_yaml), "--out",
                str(out), "--no-progress", "--device", "cpu", *streamed, *options]  # fmt: skip

    whole = tmp_path / "uninterrupted"
    done = subprocess.run(train([sys.executable], out=whole), cwd=ROOT, env=_env())
    assert done.returncode == 0
    expected = [json.loads(line)["loss"] for line in (whole / "metrics.jsonl").open()]
    assert len(expected) == STEPS

    killed = subprocess.Popen(
        train(_torchrun()), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        if (run / "checkpoints").is_dir() and list_checkpoints(run):
            break  # step 2's checkpoint is complete: kill while step 3 runs
        time.sleep(0.01)
    assert killed.poll() is None, "the run ended before it could be killed"
    _kill_tree(killed.pid)
    killed.wait(timeout=30)
    saved = list_checkpoints(run)
    assert saved and saved[-1].name == "step-000002"
    resumed = subprocess.run(
        train([sys.executable], "--resume"), cwd=ROOT, env=_env(), capture_output=True,
        text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Warning" not in resumed.stderr, resumed.stderr
    losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-5)
    state = json.loads((run / "checkpoints/step-000004/trainer/state.json").read_text())
    assert state["world_size"] == 1
    assert (run / "model" / "model.safetensors").is_file()


def _kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants at one instant. torchrun starts each worker in
    a session of its own, so killing torchrun's group or session would leave them training;
    every member is stopped first (a stopped process cannot fork), then all are killed."""
    stopped: set[int] = set()
    while True:
        tree = _descendants(root) | {root}
        if tree <= stopped:
            break
        for pid in tree - stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= tree
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _worker(config_file: str, out: str) -> None:
    """The reference run, on every process torchrun starts: as `sphinx-pipeline train` builds
    it, then the losses and the logits of the sharded model on the first batch."""
    from sphinx_mllm.pipeline.training.distributed import Distributed
    from sphinx_mllm.pipeline.training.fsdp import local_parameter_bytes
    from sphinx_mllm.pipeline.training.run import RunConfig

    run = RunConfig.from_yaml_file(Path(config_file))
    dist = Distributed.from_environment("cpu")
    torch.manual_seed(run.train.seed)
    model = build_model(resolve_config(run.model), device=dist.device)
    model_bytes = sum(p.numel() * 4 for p in model.parameters())  # in fp32, as it trains
    data = TrainingData.build(model.processor, run.data, max_length=run.train.max_length)
    losses: list[float] = []
    trainer = Trainer(
        model, data, run.train, out, distributed=dist, progress=False,
        on_step=lambda log: losses.append(log.loss),
    )  # fmt: skip
    trainer.train()
    held = local_parameter_bytes(model)  # after a step, every unit is sharded again
    _, items = data.batches(4, seed=1).epoch(0)[0]
    batch = data.collate(items[:2])
    pixels = torch.stack(batch.pixel_values)  # [images, views, 3, side, side]
    model.eval()
    with torch.no_grad():
        logits = model(batch.input_ids, pixels, batch.attention_mask).logits
    if dist.is_main:
        result = {
            "losses": losses,
            "model_bytes": model_bytes,
            "parameter_bytes_per_process": held,
        }
        Path(out, "result.json").write_text(json.dumps(result))
        tensors = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "pixel_values": pixels,
            "logits": logits,
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, Path(out, "logits.safetensors"))
    del trainer
    dist.close()


if __name__ == "__main__":
    warnings.simplefilter("default")
    _worker(*sys.argv[1:])
