"""The trainer on streamed data: the same steps as on data rendered in memory, and on two gloo
processes (FSDP, through `sphinx-pipeline train` under torchrun) the same losses as one process,
including a last global batch that two processes cannot split evenly."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sphinx_mllm.pipeline.building import build_model, resolve_config
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from sphinx_mllm.pipeline.training.streaming import StreamedData
from sphinx_mllm.pipeline.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
# per-sample normalisation, so that splitting a batch over processes changes nothing
DEMO = {"vision.encoders.0.options.norm_layer": "layernorm2d", "llm.overrides.num_hidden_layers": 2}
TRAIN = {"stage": "full", "max_steps": 3, "global_batch_size": 4, "micro_batch_size": 1,
         "lr": 1e-3, "max_length": 256}  # fmt: skip


@pytest.fixture(scope="module")
def eleven_records(tmp_path_factory):
    """11 VQA records: batches of 4, 4 and 3 (the last splits 2 + 1 over two processes)."""
    from sphinx_mllm.data.cli import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth(root, seed=5, train=12, val=2, report=False)
    lines = (root / "tasks/train/vqa.jsonl").read_text().splitlines()[:11]
    path = root / "vqa11.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, root


def losses_of(data_kind, path, root, **train):
    torch.manual_seed(0)
    model = build_model(resolve_config("demo").replace(**DEMO))
    sources = [DataSource(path, 1.0, root)]
    if data_kind == "memory":
        data = TrainingData.build(model.processor, sources, max_length=TRAIN["max_length"])
    else:
        data = StreamedData.build(
            model.processor, sources, max_length=TRAIN["max_length"], lengths="tokens",
            cache=False, num_workers=1,
        )  # fmt: skip
    losses = []
    config = TrainConfig(**(TRAIN | train))
    trainer = Trainer(
        model, data, config, path.parent / f"run-{data_kind}", progress=False,
        on_step=lambda log: losses.append(log.loss),
    )  # fmt: skip
    trainer.train()
    return losses


def test_streamed_data_trains_as_data_in_memory(eleven_records):
    path, root = eleven_records
    memory = losses_of("memory", path, root)
    streamed = losses_of("streamed", path, root)
    assert len(streamed) == 3
    assert streamed == pytest.approx(memory, rel=1e-6)


def test_two_processes_on_streamed_data_take_the_steps_of_one(eleven_records, tmp_path):
    path, root = eleven_records
    model = resolve_config("demo").replace(**DEMO).to_dict()
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(
            {
                "model": model,
                "data": [{"path": str(path), "images": str(root)}],
                "train": TRAIN | {"strategy": "fsdp"},
                "data_loading": "streamed",
                "data_workers": 1,
                "trackers": [],
            }
        )
    )
    env = os.environ.copy() | {"OMP_NUM_THREADS": "1"}
    train = ["-m", "sphinx_mllm.pipeline", "train", str(config), "--no-progress", "--device", "cpu"]
    one = subprocess.run(
        [sys.executable, *train, "--out", str(tmp_path / "one")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stdout + one.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port),
         *train, "--out", str(tmp_path / "two")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr

    def losses(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").open()]

    assert len(losses("two")) == 3
    assert losses("two") == pytest.approx(losses("one"), rel=1e-4)
