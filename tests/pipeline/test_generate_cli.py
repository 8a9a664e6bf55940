"""`sphinx-pipeline generate` and `chat`, run in process on the `demo` preset's random weights."""

from pathlib import Path

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


# -- decoding: the model's defaults, unless the command line says otherwise ------------------------

SAMPLING = {"generation.temperature": 0.1, "generation.top_p": 0.6, "generation.max_new_tokens": 5}


@pytest.fixture
def sampling_checkpoint(image_file):
    """A demo checkpoint whose config samples at temperature 0.1, top-p 0.6, 5 new tokens."""
    torch.manual_seed(0)
    model = build_model("demo", **SAMPLING)
    model.save_pretrained("sampling")
    return model


@pytest.fixture
def generate_calls(monkeypatch):
    """The options of every `generation.generate` call (which still generates)."""
    calls = []
    generate = generation.generate

    def recording(*args, **options):
        calls.append({k: v for k, v in options.items() if k not in ("attention_mask", "streamer")})
        return generate(*args, **options)

    monkeypatch.setattr(generation, "generate", recording)
    return calls


def _generate(*args):
    result = CliRunner().invoke(app, ["generate", "sampling", "-i", "x.png", "What color?", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_generate_samples_with_the_models_defaults_reproducibly(
    sampling_checkpoint, generate_calls
):
    first, again = _generate("--seed", "3"), _generate("--seed", "3")
    sampled = {"max_new_tokens": 5, "do_sample": True, "temperature": 0.1, "top_p": 0.6}
    common = {"repetition_penalty": 1.0, "num_beams": 1, "top_k": None, "seed": 3}
    assert [{k: v for k, v in c.items() if k not in ("input_ids", "pixel_values")}
            for c in generate_calls] == [sampled | common] * 2  # fmt: skip
    assert first == again
    image = Image.open("x.png").convert("RGB")
    expected = generation.answer(sampling_checkpoint, [image], ["What color?"], **sampled, seed=3)
    assert first == expected[0] + "\n"


@pytest.mark.parametrize(
    ("flags", "changed"),
    [
        (["--temperature", "0"], {"do_sample": False}),
        (["--top-p", "0.9"], {"top_p": 0.9}),
        (
            ["--temperature", "0.7", "--max-new-tokens", "2"],
            {"temperature": 0.7, "max_new_tokens": 2},
        ),
    ],
)
def test_generate_flags_override_the_models_defaults(
    sampling_checkpoint, generate_calls, flags, changed
):
    _generate(*flags)
    (options,) = generate_calls
    expected = {"max_new_tokens": 5, "do_sample": True, "temperature": 0.1, "top_p": 0.6}
    expected |= changed
    if not expected["do_sample"]:  # greedy: no sampling options at all
        expected = {"max_new_tokens": 5, "do_sample": False}
        assert "temperature" not in options and "top_p" not in options
    assert {k: options[k] for k in expected} == expected


def test_chat_samples_with_the_models_defaults(sampling_checkpoint, generate_calls):
    result = CliRunner().invoke(app, ["chat", "sampling", "-i", "x.png"], input="Hi\n")
    assert result.exit_code == 0, result.output
    (options,) = generate_calls
    assert {k: options[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p")} == {
        "max_new_tokens": 5, "do_sample": True, "temperature": 0.1, "top_p": 0.6
    }  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--top-p", "1.5"], "Invalid value for '--top-p'"),  # the rest is typer's wording
        (["--top-p", "0"], "Invalid value for '--top-p': must be in (0, 1], got 0.0"),
        (["--temperature", "-1"], "Invalid value for '--temperature'"),
    ],
)
def test_bad_decoding_flags_are_one_line(image_file, flags, message):
    result = sphinx_pipeline("generate", "demo", "Hi", *flags)
    assert result.status == 2
    assert len(result.error_lines) == 1
    assert message in result.stderr


def test_a_checkpoint_with_bad_decoding_defaults_is_one_line(image_file):
    import json

    build_model("demo").save_pretrained("bad")
    config = json.loads(Path("bad/config.json").read_text())
    config["model"]["generation"]["top_p"] = 1.5
    Path("bad/config.json").write_text(json.dumps(config))
    result = sphinx_pipeline("generate", "bad", "Hi")
    assert result.status == 2
    assert len(result.error_lines) == 1
    assert "generation.top_p must be at most 1, got 1.5" in result.stderr
