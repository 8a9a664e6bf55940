"""sphinx-pipeline under bad input and faults (issue 16): nothing a user had is lost, nothing
wrong is accepted silently, and every bad input ends in one line naming it with exit status 2."""

import json
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sphinx_mllm.core.outputs import MARKER_FILE
from sphinx_mllm.data.templates import ConversationError
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from tests.command_line import sphinx_pipeline

QUESTION = {"from": "human", "value": "<image>\nWhat colour is the square?"}


def _record(index, image="red.png", answer="red"):
    return {
        "id": f"r{index}",
        "image": image,
        "conversations": [QUESTION, {"from": "gpt", "value": answer}],
    }


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def data(tmp_path):
    """A four-record LLaVA file with its image root."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 64), "red").save(root / "red.png")
    return _write_jsonl(tmp_path / "train.jsonl", [_record(i) for i in range(4)]), root


@pytest.fixture(scope="module")
def demo_model():
    return build_model("demo")


def _train(data, out, *extra):
    file, root = data
    return sphinx_pipeline(
        "train", "--data", file, "--images", root, "--out", out, "--no-progress", *extra
    )


def _one_line_naming(outcome, *names):
    assert outcome.status == 2, outcome
    assert len(outcome.error_lines) == 1, outcome.stderr
    line = outcome.error_lines[0]
    assert line.startswith("sphinx-pipeline: ") and "Traceback" not in outcome.stderr
    for name in names:
        assert str(name) in line, (name, line)
    return line


# -- the run directory: nothing of an earlier run or of the user is lost ------------------------


def test_a_second_run_into_the_same_out_is_refused_and_restart_keeps_foreign_files(data, tmp_path):
    out = tmp_path / "run"
    assert _train(data, out, "--max-steps", "1").status == 0
    metrics = (out / "metrics.jsonl").read_text()
    (out / "notes.txt").write_text("mine")
    (out / "photo.png").write_bytes(b"mine")

    again = _train(data, out, "--max-steps", "1")
    line = _one_line_naming(again, out)
    assert "--resume" in line and "--restart" in line
    assert (out / "metrics.jsonl").read_text() == metrics

    assert _train(data, out, "--max-steps", "2", "--restart").status == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "notes.txt").read_text() == "mine" and (out / "photo.png").read_bytes() == b"mine"


def test_restart_refuses_a_directory_that_no_run_wrote(data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own metrics\n")
    (out / "model").mkdir()
    (out / "model" / "weights.bin").write_bytes(b"precious")
    _one_line_naming(_train(data, out, "--max-steps", "1", "--restart"), out)
    assert (out / "metrics.jsonl").read_text() == "my own metrics\n"
    assert (out / "model" / "weights.bin").read_bytes() == b"precious"


def test_resume_without_a_checkpoint_names_the_directory_and_keeps_the_metrics(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    line = _one_line_naming(_train(data, out, "--max-steps", "1", "--resume"), out)
    assert "no checkpoint" in line
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'


def test_a_torn_last_line_of_the_metrics_does_not_block_resume(data, tmp_path):
    out = tmp_path / "run"
    assert _train(data, out, "--max-steps", "2", "--set", "checkpoint_every=1").status == 0
    with (out / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 3, "loss": 1.2')  # a crash in the middle of a write
    resumed = _train(data, out, "--max-steps", "3", "--resume", "--set", "checkpoint_every=1")
    assert resumed.status == 0, resumed.stderr
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_a_corrupt_line_before_the_last_is_named(data, tmp_path):
    out = tmp_path / "run"
    assert _train(data, out, "--max-steps", "2", "--set", "checkpoint_every=1").status == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(f"{lines[0]}\nnot json\n{lines[1]}\n")
    _one_line_naming(_train(data, out, "--max-steps", "3", "--resume"), out / "metrics.jsonl")


def test_bad_data_writes_nothing_into_out(data, tmp_path):
    file, _ = data
    file.write_text(file.read_text() + "{not json\n")
    out = tmp_path / "run"
    _one_line_naming(_train(data, out, "--max-steps", "1"), file)
    assert not out.exists()


# -- training and evaluation data -----------------------------------------------------------------


def test_image_paths_may_not_leave_the_image_root(tmp_path, demo_model):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "outside.png")
    for name in ("../outside.png", str(tmp_path / "outside.png")):
        file = _write_jsonl(tmp_path / "train.jsonl", [_record(0, image=name)])
        with pytest.raises(ValueError, match=r"image root|absolute path") as raised:
            TrainingData.build(demo_model.processor, [DataSource(file, 1.0, root)])
        assert str(file) in str(raised.value) and name in str(raised.value)
        allowed = DataSource(file, 1.0, root, images_outside_root=True)
        assert TrainingData.build(demo_model.processor, [allowed]).report.kept == {"train": 1}


@pytest.mark.parametrize("content", [None, b"", b"\x89PNG\r\n\x1a\n broken", b"GIF89a"])
def test_a_missing_or_corrupt_image_is_named_when_the_data_loads(tmp_path, demo_model, content):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 64), "red").save(root / "red.png")
    if content is not None:
        (root / "bad.png").write_bytes(content)
    file = _write_jsonl(
        tmp_path / "train.jsonl", [_record(0), _record(1, image="bad.png"), _record(2)]
    )
    with pytest.raises(ValueError) as raised:
        TrainingData.build(demo_model.processor, [DataSource(file, 1.0, root)])
    assert str(file) in str(raised.value) and str(root / "bad.png") in str(raised.value)
    assert "'r1'" in str(raised.value)
    skipped = TrainingData.build(
        demo_model.processor, [DataSource(file, 1.0, root)], on_error="skip"
    )
    assert skipped.report.kept == {"train": 2}
    assert skipped.report.dropped == {"train: missing or unreadable image": 1}


def test_invalid_conversations_are_named_or_skipped_and_counted(tmp_path, demo_model):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 64), "red").save(root / "red.png")
    invalid = {"id": "bad", "conversations": [{"from": "gpt", "value": "an answer first"}]}
    only_invalid = _write_jsonl(tmp_path / "invalid.jsonl", [invalid, invalid | {"id": "bad2"}])
    with pytest.raises(ConversationError, match="bad"):
        TrainingData.build(demo_model.processor, [DataSource(only_invalid, 1.0, root)])
    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [_record(0), invalid, _record(1)])
    report = TrainingData.build(
        demo_model.processor, [DataSource(mixed, 1.0, root)], on_error="skip"
    ).report
    assert report.kept == {"mixed": 2}
    assert report.dropped == {"mixed: conversation cannot be rendered": 1}


def test_eval_refuses_an_empty_file_and_a_limit_under_one(data, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_naming(sphinx_pipeline("eval", "demo", "--data", empty), empty)
    file, root = data
    line = _one_line_naming(
        sphinx_pipeline("eval", "demo", "--data", file, "--images", root, "--limit", "0")
    )
    assert "--limit" in line


def test_eval_checks_every_image_before_it_scores(data, tmp_path):
    file, root = data
    _write_jsonl(file, [_record(0), _record(1, image="missing.png")])
    outcome = sphinx_pipeline("eval", "demo", "--data", file, "--images", root)
    _one_line_naming(outcome, file, root / "missing.png")
    assert outcome.stdout == ""  # nothing was scored


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_model):
    return demo_model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "demo")


def _copy(checkpoint, target):
    import shutil

    return shutil.copytree(checkpoint, target)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("llm.overrides.hidden_size", "wide"),
        ("vision.splitter", [1]),
        ("vision.encoders.0.name", {"a": 1}),
        ("llm.pretrained", 7),
        ("tokenizer.image_token_id", "x"),
    ],
)
def test_bad_types_in_a_checkpoint_config_are_named(checkpoint, tmp_path, path, value):
    from sphinx_mllm.pipeline.config import set_path

    copy = _copy(checkpoint, tmp_path / "ckpt")
    config = json.loads((copy / "config.json").read_text())
    set_path(config["model"], path, value)
    (copy / "config.json").write_text(json.dumps(config))
    line = _one_line_naming(sphinx_pipeline("generate", copy, "Hi"), copy / "config.json")
    assert path.rsplit(".", 1)[-1] in line or path.split(".")[0] in line


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"model_type": "llama"}',
        '{"model_type": "sphinx", "sphinx_format": 7}',
        '{"model_type": "sphinx", "sphinx_format": 2, "model": 3}',
    ],
)
def test_an_invalid_config_json_is_named(checkpoint, tmp_path, text):
    copy = _copy(checkpoint, tmp_path / "ckpt")
    (copy / "config.json").write_text(text)
    _one_line_naming(sphinx_pipeline("generate", copy, "Hi"), copy / "config.json")


def test_checkpoints_take_the_permissions_of_the_umask(demo_model, tmp_path):
    previous = os.umask(0o002)
    try:
        written = demo_model.save_pretrained(tmp_path / "shared")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o775
    assert stat.S_IMODE((written / "model.safetensors").stat().st_mode) == 0o664
    assert stat.S_IMODE((written / "tokenizer_config.json").stat().st_mode) == 0o664


def test_overwrite_replaces_only_an_earlier_checkpoint(demo_model, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("mine")
    with pytest.raises(OSError, match="not an earlier output"):
        demo_model.save_pretrained(target, overwrite=True)
    assert (target / "mine.txt").read_text() == "mine"
    demo_model.save_pretrained(tmp_path / "ckpt")
    assert demo_model.save_pretrained(tmp_path / "ckpt", overwrite=True) == tmp_path / "ckpt"
    assert json.loads((tmp_path / "ckpt" / MARKER_FILE).read_text())["writer"] == "sphinx-pipeline"


# -- import-llava --------------------------------------------------------------------------------


def test_import_llava_force_never_replaces_a_directory_that_holds_its_source(tmp_path):
    from tests.pipeline.test_llava_import import save_llava

    project = tmp_path / "project"
    save_llava(project / "hf")
    (project / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (project / "hf").iterdir())
    line = _one_line_naming(
        sphinx_pipeline("import-llava", project / "hf", project, "--force"), project
    )
    assert "not an earlier output" in line
    # even when OUT is an earlier checkpoint, it may not hold the source
    (project / MARKER_FILE).write_text(json.dumps({"writer": "sphinx-pipeline"}))
    line = _one_line_naming(
        sphinx_pipeline("import-llava", project / "hf", project, "--force"), project
    )
    assert "holds" in line and "input" in line
    assert sorted(p.name for p in (project / "hf").iterdir()) == before
    assert (project / "notes.txt").read_text() == "mine"


def test_import_llava_errors_are_one_line(tmp_path):
    (tmp_path / "hf").mkdir()
    _one_line_naming(
        sphinx_pipeline("import-llava", tmp_path / "hf", tmp_path / "out"), tmp_path / "hf"
    )
    assert not (tmp_path / "out").exists()


# -- one error path, the same names everywhere ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["describe", "nosuch"], "nosuch"),
        (["components", "--kind", "gizmos"], "gizmos"),
        (["list", "gizmos"], "gizmos"),
        (["train", "--set", "model.vision.encoders.5.name=x"], "model.vision.encoders.5.name"),
        (["train", "--set", "lrate=1"], "lrate"),
        (["train", "--resume", "--restart"], "pick one"),
        (["train", "--no-such-option"], "--no-such-option"),
        (["merge", "a", "b", "c", "--beta", "2"], "beta"),
        (["no-such-command"], "no-such-command"),
        (["generate", "no-such-ckpt", "Hi"], "no-such-ckpt"),
    ],
)
def test_bad_command_lines_get_one_line_and_status_2(args, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_naming(sphinx_pipeline(*args), named)


def test_encode_names_an_unknown_encoder_and_a_missing_image(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(photo)
    _one_line_naming(sphinx_pipeline("encode", photo, "-e", "nosuch"), "nosuch")
    _one_line_naming(sphinx_pipeline("encode", tmp_path / "x.png", "-e", "tiny_clip_vit"), "x.png")


def test_debug_shows_the_traceback():
    with pytest.raises(LookupError, match="nosuch"):
        sphinx_pipeline("describe", "nosuch", "--debug")


def test_list_and_components_take_the_same_kind_names():
    from sphinx_mllm.pipeline.components import KIND_NAMES

    for short, kind in KIND_NAMES.items():
        listed = {line.split()[0] for line in sphinx_pipeline("list", short).stdout.splitlines()}
        assert listed == {
            line.split()[0] for line in sphinx_pipeline("list", kind).stdout.splitlines()
        }
        shown = sphinx_pipeline("components", "--kind", short).stdout.splitlines()
        assert shown[0] == f"{short} ({len(listed)})", shown[:1]
        assert {line.split()[0] for line in shown[1:]} == listed
        assert sphinx_pipeline("components", "--kind", kind).stdout.splitlines() == shown


def test_help_lists_every_command_with_a_whole_sentence():
    from sphinx_mllm.pipeline.cli import app
    from sphinx_mllm.pipeline.commands import summary

    help_text = " ".join(sphinx_pipeline("--help").stdout.replace("│", " ").split())
    for command in app.registered_commands:
        line = summary(command.callback)
        assert line.endswith((".", ")")) and "..." not in line, line
        assert command.short_help == line
        assert line in help_text, line


def test_version_is_printed():
    from importlib.metadata import version

    outcome = sphinx_pipeline("--version")
    assert outcome.status == 0
    assert outcome.stdout.strip() == f"sphinx-pipeline {version('sphinx-pipeline')}"


# -- generated bad inputs ----------------------------------------------------------------------

BAD_LINES = st.one_of(
    st.just("{not json"),
    st.just("[1, 2, 3]"),
    st.builds(json.dumps, st.one_of(st.integers(), st.text(max_size=8), st.none())),
    st.builds(
        lambda conversations: json.dumps({"id": "x", "conversations": conversations}),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.lists(
                st.dictionaries(st.sampled_from(["from", "value"]), st.integers()), max_size=2
            ),
        ),
    ),
    st.builds(
        lambda image: json.dumps(_record(0, image=image)),
        st.one_of(
            st.integers(),
            st.just("../outside.png"),
            st.just("/etc/passwd"),
            st.just("missing.png"),
            st.just("corrupt.png"),
            st.lists(st.just("../x.png"), min_size=1, max_size=2),
        ),
    ),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bad=BAD_LINES, position=st.integers(0, 3))
def test_generated_bad_training_records_are_named_and_write_nothing(data, tmp_path, bad, position):
    file, root = data
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    lines = [json.dumps(_record(i)) for i in range(3)]
    lines.insert(position, bad)
    file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    outcome = _train(data, out, "--max-steps", "1")
    _one_line_naming(outcome, file)
    assert not out.exists()
