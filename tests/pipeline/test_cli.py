"""The `sphinx-pipeline` command line (typer), exercised in process."""

from typer.testing import CliRunner

from sphinx_mllm.pipeline.cli import app


def test_components_filters_by_kind_and_pattern():
    result = CliRunner().invoke(app, ["components", "linear*", "--kind", "projectors"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "projectors (2)"
    assert [line.split()[0] for line in lines[1:]] == ["linear", "linear_ln"]
    assert all("sphinx-mixer" in line for line in lines[1:])


def test_components_rejects_an_unknown_kind():
    result = CliRunner().invoke(app, ["components", "--kind", "encoderz"])
    assert result.exit_code != 0
    assert "Unknown component kind 'encoderz'" in str(result.exception)


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
    result = CliRunner().invoke(app, ["encode", str(tmp_path / "none.png"), "-e", "tiny_clip_vit"])
    assert result.exit_code == 2
    assert "no image file at" in result.output
