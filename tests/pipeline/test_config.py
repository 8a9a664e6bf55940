"""ModelConfig: YAML round trip, dotted changes, decoding defaults, and errors that name the
field."""

import pytest

from sphinx_mllm.pipeline.building import build_model, resolve_config
from sphinx_mllm.pipeline.config import ConfigError, GenerationDefaults, ModelConfig
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
    placements = "'placeholder', 'prefix' or 'after_question'"
    with pytest.raises(ConfigError, match=rf"^placement must be {placements}, got"):
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


# -- decoding defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["sphinx", "sphinx-1k", "sphinx-2k", "sphinx-tiny"])
def test_sphinx_presets_decode_as_the_released_code(preset):
    generation = resolve_config(preset).generation
    assert (generation.temperature, generation.top_p) == (0.1, 0.75)
    assert generation.task_max_new_tokens == {"vqa": 10, "multiple_choice": 10, "rec": 30}


@pytest.mark.parametrize("preset", ["demo", "llava-1.5"])
def test_other_presets_decode_greedily(preset):
    assert resolve_config(preset).generation == GenerationDefaults()


def test_configs_saved_before_generation_defaults_load_greedy():
    old = demo().to_dict()
    del old["generation"]
    generation = ModelConfig.from_dict(old).generation
    assert (generation.temperature, generation.top_p, generation.max_new_tokens) == (0, 1, 256)
    assert generation.task_max_new_tokens == {}


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("top_p", 1.5, "generation.top_p must be at most 1, got 1.5"),
        ("top_p", 0, "generation.top_p must be positive, got 0"),
        ("temperature", -1, "generation.temperature must be >= 0, got -1"),
        ("temperature", "hot", "generation.temperature: expected a number, got 'hot'"),
        ("max_new_tokens", 0, "generation.max_new_tokens must be at least 1, got 0"),
        (
            "task_max_new_tokens",
            {"vqa": 0},
            "generation.task_max_new_tokens.vqa must be at least 1, got 0",
        ),
        ("top_k", 5, "generation: unknown field 'top_k' (did you mean 'top_p'?)"),
    ],
)
def test_bad_decoding_defaults_are_one_line_naming_the_field(setting, value, problem):
    with pytest.raises(ConfigError) as raised:
        demo().replace(**{f"generation.{setting}": value})
    assert str(raised.value) == problem


def test_given_options_override_the_defaults_and_are_checked():
    defaults = GenerationDefaults(temperature=0.1, top_p=0.75, task_max_new_tokens={"rec": 30})
    given = defaults.overridden(temperature=None, top_p=0.9, max_new_tokens=None)
    assert given == GenerationDefaults(temperature=0.1, top_p=0.9, task_max_new_tokens={"rec": 30})
    assert defaults.overridden(temperature=0).temperature == 0
    with pytest.raises(ConfigError, match=r"^top_p must be at most 1, got 1.5$"):
        defaults.overridden(top_p=1.5)
    assert GenerationDefaults.of(None) == GenerationDefaults()
