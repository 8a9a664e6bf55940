"""The `sphinx-pipeline` command line (typer), exercised in process."""

import pytest
from typer.testing import CliRunner

from sphinx_mllm.pipeline.cli import app
from tests.command_line import sphinx_pipeline


def test_components_filters_by_kind_and_pattern():
    result = CliRunner().invoke(app, ["components", "linear*", "--kind", "projectors"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "projectors (2)"
    assert [line.split()[0] for line in lines[1:]] == ["linear", "linear_ln"]
    assert all("sphinx-mixer" in line for line in lines[1:])


def test_components_rejects_an_unknown_kind():
    result = sphinx_pipeline("components", "--kind", "encoderz")
    assert result.status == 2
    assert "Unknown component kind 'encoderz' (did you mean encoders?)" in result.stderr


def test_encode_prints_the_tokens_of_each_encoder(tmp_path):
    from PIL import Image
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    result = CliRunner().invoke(
        app, ["encode", str(photo), "--encoder", "tiny_clip_vit", "-e", "tiny_blip2_qformer"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "astronaut.png: 512x512 RGB"
    assert "tiny_clip_vit" in lines[1] and "tokens (17, 32)  grid 4x4 + leading token" in lines[1]
    assert "tiny_blip2_qformer" in lines[2] and "tokens (4, 32)  queries" in lines[2]


def test_encode_refuses_a_missing_image(tmp_path):
    result = sphinx_pipeline("encode", tmp_path / "none.png", "-e", "tiny_clip_vit")
    assert result.status == 2
    assert f"image {tmp_path / 'none.png'} does not exist" in result.stderr


COMMANDS = [
    "components", "encode", "describe", "generate", "chat", "import-llava", "import-accessory",
    "export-llava",
    "convert-checkpoint", "serve", "train", "consolidate", "eval", "list", "merge",
]  # fmt: skip


def test_every_command_has_help_with_an_example():
    import typer

    registered = set(typer.main.get_command(app).commands)
    assert registered == set(COMMANDS)  # a new command gets its help checked here too
    for command in COMMANDS:
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0, (command, result.output)
        if command not in ("components", "encode"):
            assert "sphinx-pipeline" in result.output and "xample" in result.output, command


def test_train_parses_every_documented_option(tmp_path, monkeypatch):
    from sphinx_mllm.pipeline.training import session

    seen = {}
    monkeypatch.setattr(session, "run_training", lambda **options: seen.update(options))
    config = tmp_path / "run.yaml"
    args = [
        "train", str(config), "--preset", "demo", "--data", "a.jsonl:2", "--data", "b.jsonl",
        "--images", "imgs", "--eval-data", "val.jsonl", "--out", str(tmp_path / "run"),
        "--max-steps", "7", "--set", "lr=1e-3", "--set", "stage=lora", "--resume",
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen["config_file"] == config and seen["preset"] == "demo"
    assert seen["data"] == ["a.jsonl:2", "b.jsonl"] and [str(p) for p in seen["images"]] == ["imgs"]
    assert seen["eval_data"] == ["val.jsonl"] and seen["max_steps"] == 7
    assert seen["settings"] == ["lr=1e-3", "stage=lora"]
    assert seen["resume"] and not seen["restart"] and seen["device"] == "cpu"
    assert not seen["progress"]


def test_train_options_resolve_into_a_run(tmp_path):
    from sphinx_mllm.pipeline.training.session import resolve_run

    run = resolve_run(
        None, "demo", ["a.jsonl:2", "b.jsonl"], [tmp_path], ["val.jsonl"], 7,
        ["lr=1e-3", "stage=lora", "eval_limit=5", "model.llm.overrides.num_hidden_layers=2"],
    )  # fmt: skip
    assert [(s.path.name, s.weight, s.images) for s in run.data] == [
        ("a.jsonl", 2.0, tmp_path),
        ("b.jsonl", 1.0, tmp_path),
    ]
    assert run.train.max_steps == 7 and run.train.lr == 1e-3 and run.train.stage == "lora"
    assert run.eval_limit == 5 and run.synthetic is None
    assert run.model["llm"]["overrides"]["num_hidden_layers"] == 2
    assert [s.path.name for s in run.eval] == ["val.jsonl"]


def test_train_refuses_bad_settings(tmp_path):
    result = sphinx_pipeline("train", "--set", "lrate=1", "--out", tmp_path)
    assert result.status == 2 and "lrate" in result.stderr
    result = sphinx_pipeline("train", "--resume", "--restart", "--out", tmp_path)
    assert result.status == 2 and "pick one" in result.stderr


def test_list_shows_one_kind(tmp_path):
    result = CliRunner().invoke(app, ["list", "presets"])
    assert result.exit_code == 0
    assert {"sphinx", "sphinx-1k", "sphinx-2k", "sphinx-tiny", "llava-1.5", "demo"} <= {
        line.split()[0] for line in result.output.splitlines()
    }
    assert sphinx_pipeline("list", "gizmos").status == 2


def test_merge_mixes_the_llm_weights_only(tmp_path):
    import torch

    from sphinx_mllm.pipeline.building import build_model
    from sphinx_mllm.pipeline.model import SphinxModel

    torch.manual_seed(0)
    first = build_model("demo")
    first.save_pretrained(tmp_path / "a")
    torch.manual_seed(1)
    second = build_model("demo")
    second.save_pretrained(tmp_path / "b")
    out = tmp_path / "mixed"
    result = CliRunner().invoke(
        app, ["merge", str(tmp_path / "a"), str(tmp_path / "b"), str(out), "--beta", "0.25"]
    )
    assert result.exit_code == 0, result.output
    mixed = SphinxModel.from_pretrained(out).state_dict()
    a, b = first.state_dict(), second.state_dict()
    for name, tensor in mixed.items():
        expected = 0.25 * a[name] + 0.75 * b[name] if name.startswith("llm.") else a[name]
        assert torch.equal(tensor, expected.to(tensor.dtype)), name
    assert sphinx_pipeline("merge", "a", "b", out, "--beta", "2").status == 2


def test_describe_works_for_every_preset():
    import json

    from sphinx_mllm.pipeline import list_model_presets

    for preset in list_model_presets():
        result = CliRunner().invoke(app, ["describe", preset, "--json"])
        assert result.exit_code == 0, (preset, result.output)
        description = json.loads(result.output)
        assert description["visual_tokens_per_image"] > 0
        assert description["parameters"]["total"] == sum(
            row["parameters"] for row in description["components"]
        )


def test_max_steps_shortens_every_phase_of_the_demo_in_proportion():
    from sphinx_mllm.pipeline.training.run import demo_run_config
    from sphinx_mllm.pipeline.training.session import resolve_run

    full = demo_run_config()
    notes: list[str] = []
    quick = resolve_run(None, None, [], [], [], 52, [], report=notes.append)
    assert full.train.max_steps == 2600 and quick.train.max_steps == 52  # 1/50 of the run
    assert quick.synthetic == {**full.synthetic, "train": 100, "val": 10}  # floors: 60 and 1
    assert quick.grounding["steps"] == 10 and quick.train.warmup_steps == 1
    assert quick.train.eval_every == 10 and quick.eval_limit == 20 and quick.curve_limit == 10
    assert quick.train.lr == full.train.lr and quick.train.global_batch_size == 16
    assert notes == [
        "--max-steps 52 of 2600: warmup, curve interval, synthetic data (100 training items of "
        "each kind), grounding (10 steps), held-out scoring (20 records per source) shortened "
        "in proportion"
    ]
    half = resolve_run(None, None, [], [], [], 1300, [])
    assert half.synthetic["train"] == 1500 and half.grounding["steps"] == 150
    assert (half.eval_limit, half.curve_limit, half.train.eval_every) == (100, 40, 250)
    # a longer run than planned lengthens nothing else; --set still has the last word
    notes.clear()
    longer = resolve_run(None, None, [], [], [], 5000, ["eval_limit=7"], report=notes.append)
    assert longer.synthetic == full.synthetic and longer.grounding == full.grounding
    assert longer.eval_limit == 7 and longer.train.warmup_steps == 30 and notes == []
    assert resolve_run(None, None, [], [], [], 52, ["grounding.steps=40"]).grounding["steps"] == 40


def test_task_weights_reweight_the_synthetic_mixture(tmp_path):
    from sphinx_mllm.pipeline.training.run import DEMO_TASK_WEIGHTS, RunConfig, synthetic_sources
    from sphinx_mllm.pipeline.training.session import resolve_run

    run = resolve_run(None, None, [], [], [], None, ["task_weights.vqa=3", "task_weights.pose=0"])
    assert run.task_weights == {"vqa": 3.0, "pose": 0.0} and run.synthetic is not None
    train, held_out = synthetic_sources(tmp_path, run.task_weights)
    weights = {source.name: source.weight for source in train}
    assert weights == {
        task: {"vqa": 3.0}.get(task, weight)
        for task, weight in DEMO_TASK_WEIGHTS.items()
        if task != "pose"
    }
    assert "pose" in {source.name for source in held_out}  # still scored
    with pytest.raises(ValueError, match=r"Unknown synthetic task\(s\) \['vqa2'\]"):
        RunConfig.from_dict({"task_weights": {"vqa2": 1.0}})
    with pytest.raises(ValueError, match="must be >= 0"):
        RunConfig.from_dict({"task_weights": {"vqa": -1}})
    with pytest.raises(ValueError, match="must be >= 0"):
        RunConfig.from_dict({"task_weights": dict.fromkeys(DEMO_TASK_WEIGHTS, 0)})
