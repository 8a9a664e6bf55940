"""ModelConfig: YAML round trip, dotted changes, and errors that name the field."""

import pytest

from sphinx_mllm.pipeline.building import build_model, resolve_config
from sphinx_mllm.pipeline.config import ConfigError, ModelConfig
from sphinx_mllm.pipeline.presets import demo, sphinx
from tests.pipeline.conftest import tiny_config


@pytest.mark.parametrize("factory", [sphinx, demo, tiny_config])
def test_yaml_round_trip_is_exact(factory, tmp_path):
    config = factory()
    assert ModelConfig.from_yaml(config.to_yaml()) == config
    assert ModelConfig.load(config.save(tmp_path / "model.yaml")) == config
    assert resolve_config(str(tmp_path / "model.yaml")) == config


def test_dotted_changes_swap_components():
    config = tiny_config().replace(
        **{"vision.encoders.1.name": "tiny_siglip", "vision.mixer_options.projector": "mlp2x_gelu"}
    )
    assert [e.name for e in config.vision.encoders] == ["tiny_clip_vit", "tiny_siglip"]
    assert config.vision.mixer_options == {"projector": "mlp2x_gelu"}


def test_encoders_may_be_given_by_name_alone():
    data = tiny_config().to_dict()
    data["vision"]["encoders"] = ["tiny_clip_vit"]
    assert ModelConfig.from_dict(data).vision.encoders[0].image_size is None


def test_unknown_field_names_its_path_and_a_close_match():
    data = tiny_config().to_dict()
    data["vision"]["encoder"] = data["vision"].pop("encoders")
    with pytest.raises(ConfigError) as raised:
        ModelConfig.from_dict(data)
    assert raised.value.problems == (
        "vision.encoders: field required",
        "vision: unknown field 'encoder' (did you mean 'encoders'?)",
    )


def test_missing_and_bad_values_are_named():
    data = tiny_config().to_dict()
    del data["llm"]
    with pytest.raises(ConfigError, match=r"^llm: field required$"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"^placement must be 'placeholder' or 'prefix', got"):
        tiny_config(placement="suffix")
    with pytest.raises(ConfigError, match=r"^dtype must be 'float32', 'bfloat16' or 'float16'"):
        tiny_config(dtype="int8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ModelConfig.from_yaml("vision: [")


def test_unknown_component_names_list_close_matches():
    with pytest.raises(Exception, match="tiny_clip_vit"):
        build_model(tiny_config(**{"vision.encoders.0.name": "tiny_clip_vitt"}))
    with pytest.raises(Exception, match="sphinx-1k"):
        resolve_config("sphinx-1kk")


def test_python_objects_replace_named_components():
    from sphinx_mllm.encoders import create_encoder

    base = build_model(tiny_config())
    encoders = [create_encoder("tiny_clip_vit"), create_encoder("tiny_dinov2")]
    model = build_model(tiny_config(), components={"encoders": encoders, "llm": base.llm})
    assert model.llm is base.llm
    assert list(model.visual.encoders.values()) == encoders
    with pytest.raises(ValueError, match="Unknown component key"):
        build_model(tiny_config(), components={"decoder": None})
