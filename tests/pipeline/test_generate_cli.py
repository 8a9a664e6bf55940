"""`sphinx-pipeline generate` and `chat`, run in process on the `demo` preset's random weights."""

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import sphinx_mllm.pipeline.generation as generation
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.cli import app
from sphinx_mllm.pipeline.processor import SphinxProcessor
from tests.command_line import sphinx_pipeline


@pytest.fixture
def image_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (48, 32), (200, 30, 30)).save("x.png")
    return "x.png"


def test_generate_prints_the_reply(image_file):
    result = CliRunner().invoke(
        app,
        ["generate", "demo", "--image", image_file, "What color?", "--max-new-tokens", "3",
         "--seed", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "building it with random weights" in result.stderr
    torch.manual_seed(0)  # the seed fixes the preset's random weights
    model = build_model("demo")
    expected = generation.answer(
        model, [Image.open(image_file).convert("RGB")], ["What color?"], max_new_tokens=3
    )
    assert result.stdout == expected[0] + "\n"


def test_generate_loads_a_checkpoint_directory(image_file):
    model = build_model("demo")
    model.save_pretrained("ckpt")
    result = CliRunner().invoke(
        app, ["generate", "ckpt", "-i", image_file, "What color?", "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    expected = generation.answer(
        model, [Image.open(image_file).convert("RGB")], ["What color?"], max_new_tokens=4
    )
    assert result.stdout == expected[0] + "\n"


def test_generate_reports_a_directory_that_is_no_checkpoint(image_file, tmp_path):
    (tmp_path / "empty").mkdir()
    result = sphinx_pipeline("generate", "empty", "Hi")
    assert result.status == 2
    expected = "empty is not a sphinx-pipeline checkpoint: config.json is missing"
    assert result.stderr == f"sphinx-pipeline: {expected}\n"


def test_generate_draws_the_boxes_of_the_reply(image_file, monkeypatch):
    monkeypatch.setattr(generation, "answer", lambda *args, **kwargs: ["[0.10,0.20,0.50,0.60]"])
    result = CliRunner().invoke(
        app, ["generate", "demo", "-i", image_file, "Where?", "--draw", "out.png"]
    )
    assert result.exit_code == 0, result.output
    assert "drew 1 box(es) on out.png" in result.stderr
    assert Image.open("out.png").size == (48, 32)


def test_generate_refuses_a_missing_image(image_file):
    result = sphinx_pipeline("generate", "demo", "--image", "missing.png", "Hi")
    assert result.status == 2
    assert result.stderr == "sphinx-pipeline: image missing.png does not exist\n"


def test_generate_refuses_a_missing_checkpoint(image_file):
    result = sphinx_pipeline("generate", "no-such-ckpt", "Hi")
    assert result.status == 2
    assert "no-such-ckpt does not exist, and 'no-such-ckpt' is no model preset" in result.stderr


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_help_shows_an_example(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert f"Example: sphinx-pipeline {command}" in result.output


def test_chat_keeps_the_conversation_until_exit(image_file, monkeypatch):
    prompts, replies = [], []
    generate = generation.generate
    processor_call = SphinxProcessor.__call__

    def recording_processor(processor, conversations, images=None, **options):
        prompts.append([dict(turn) for turn in conversations[0]])
        return processor_call(processor, conversations, images, **options)

    def recording_generate(*args, **options):
        output = generate(*args, **options)
        replies.append(output.texts[0].strip())
        return output

    monkeypatch.setattr(SphinxProcessor, "__call__", recording_processor)
    monkeypatch.setattr(generation, "generate", recording_generate)
    result = CliRunner().invoke(
        app,
        ["chat", "demo", "--image", image_file, "--max-new-tokens", "4", "--seed", "1"],
        input="What color?\n\nAre you sure?\nexit\nnever read\n",
    )
    assert result.exit_code == 0, result.output
    assert len(prompts) == len(replies) == 2
    assert result.stdout == "".join(reply + "\n" for reply in replies)
    assert prompts[0] == [{"from": "human", "value": "What color?"}]
    if replies[0]:  # an empty reply is left out of the history
        assert prompts[1][:2] == [prompts[0][0], {"from": "gpt", "value": replies[0]}]
    assert prompts[1][-1] == {"from": "human", "value": "Are you sure?"}
