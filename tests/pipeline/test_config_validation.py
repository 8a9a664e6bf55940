"""Model and run configs are typed and checked on load (pydantic): every problem is one line of a
`ConfigError` naming the field by its path, `model.vision.encoders[1].image_size: ...`."""

import dataclasses

import pytest
from pydantic import ValidationError

from sphinx_mllm.pipeline.config import (
    ConfigError,
    EncoderSpec,
    LLMConfig,
    ModelConfig,
    VisionConfig,
)
from sphinx_mllm.pipeline.training.data import DataSource
from sphinx_mllm.pipeline.training.run import RunConfig, demo_run_config
from sphinx_mllm.pipeline.training.trainer import TrainConfig
from tests.pipeline.conftest import tiny_config


def _problems(make, *args, **kwargs) -> tuple[str, ...]:
    """The lines of the `ConfigError` that `make(...)` raises (never pydantic's own error)."""
    with pytest.raises(ConfigError) as raised:
        make(*args, **kwargs)
    assert not isinstance(raised.value, ValidationError)
    assert str(raised.value) == "\n".join(raised.value.problems)
    return raised.value.problems


def _model(**changes):
    """The tiny test model's config as plain data, `changes` set by dotted path."""
    data = tiny_config().to_dict()
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return data


def test_a_wrong_type_deep_in_a_list_is_named_by_its_path():
    data = _model(**{"vision.encoders.1.image_size": "big"})
    assert _problems(ModelConfig.from_dict, data) == (
        "vision.encoders[1].image_size: expected an integer, got 'big'",
    )
    assert _problems(RunConfig.from_dict, {"model": data}) == (
        "model.vision.encoders[1].image_size: expected an integer, got 'big'",
    )


def test_load_names_the_file(tmp_path):
    config = tiny_config()
    path = config.save(tmp_path / "model.yaml")
    path.write_text(path.read_text().replace("image_size: 56", "image_size: big"))
    assert _problems(ModelConfig.load, path) == (
        f"{path}: vision.encoders[1].image_size: expected an integer, got 'big'",
    )


def test_an_unknown_field_gets_a_close_match():
    data = _model()
    data["vision"]["encoderz"] = data["vision"].pop("encoders")
    assert _problems(ModelConfig.from_dict, data) == (
        "vision.encoders: field required",
        "vision: unknown field 'encoderz' (did you mean 'encoders'?)",
    )
    data = _model()
    data["vision"]["encoders"][0]["imagesize"] = 32
    assert _problems(ModelConfig.from_dict, data) == (
        "vision.encoders[0]: unknown field 'imagesize' (did you mean 'image_size'?)",
    )
    assert _problems(ModelConfig.from_dict, _model() | {"nme": "x"}) == (
        "unknown field 'nme' (did you mean 'name'?)",
    )


def test_a_missing_required_field():
    data = _model()
    del data["llm"]["name"]
    assert _problems(ModelConfig.from_dict, data) == ("llm.name: field required",)
    assert _problems(LLMConfig) == ("name: field required",)


def test_a_bool_is_not_an_int_and_keys_are_strings():
    assert _problems(ModelConfig.from_dict, _model(**{"vision.encoders.0.image_size": True})) == (
        "vision.encoders[0].image_size: expected an integer, got True",
    )
    assert _problems(ModelConfig.from_dict, _model(**{"tokenizer.image_token_id": False})) == (
        "tokenizer.image_token_id: expected an integer, got False",
    )
    assert _problems(ModelConfig.from_dict, _model(**{"llm.overrides": {1: 2}})) == (
        "llm.overrides: keys must be strings, got 1",
    )
    assert _problems(ModelConfig.from_dict, _model(**{"llm.pretrained": 7})) == (
        "llm.pretrained: expected a boolean or a string, got 7",
    )


def test_a_bad_placement_and_dtype():
    assert _problems(ModelConfig.from_dict, _model(placement="suffix")) == (
        "placement must be 'placeholder', 'prefix' or 'after_question', got 'suffix'",
    )
    assert _problems(tiny_config, dtype="int8") == (
        "dtype must be 'float32', 'bfloat16' or 'float16', got 'int8'",
    )


def test_several_problems_are_all_named_one_per_line():
    data = _model(
        **{
            "vision.encoders.1.image_size": "big",
            "vision.mixer": 3,
            "llm.name": None,
            "placement": "suffix",
        }
    )
    data["tokenizer"]["colour"] = "red"
    problems = _problems(ModelConfig.from_dict, data)
    assert problems == (
        "vision.encoders[1].image_size: expected an integer, got 'big'",
        "vision.mixer: expected a string, got 3",
        "llm.name: expected a string, got None",
        "tokenizer: unknown field 'colour' (fields: source, image_token, image_token_id, "
        "pad_token, resize_embeddings)",
        "placement must be 'placeholder', 'prefix' or 'after_question', got 'suffix'",
    )


def test_encoders_by_name_and_at_least_one():
    data = _model(**{"vision.encoders": ["tiny_clip_vit", {"name": "tiny_dinov2"}]})
    encoders = ModelConfig.from_dict(data).vision.encoders
    assert encoders == [EncoderSpec("tiny_clip_vit"), EncoderSpec("tiny_dinov2")]
    assert _problems(ModelConfig.from_dict, _model(**{"vision.encoders": []})) == (
        "vision.encoders must not be empty: a model needs an encoder",
    )
    assert _problems(ModelConfig.from_dict, _model(**{"vision.encoders": "tiny_clip_vit"})) == (
        "vision.encoders: expected a list, got 'tiny_clip_vit'",
    )
    assert _problems(ModelConfig.from_dict, _model(**{"vision.encoders.0": 3})) == (
        "vision.encoders[0]: expected a mapping, got 3",
    )


def test_objects_made_in_python_are_checked_too():
    assert _problems(EncoderSpec, "tiny_clip_vit", image_size="big") == (
        "image_size: expected an integer, got 'big'",
    )
    assert _problems(EncoderSpec, 3) == ("name: expected a string, got 3",)
    config = tiny_config()
    assert _problems(dataclasses.replace, config.vision, encoders=[]) == (
        "encoders must not be empty: a model needs an encoder",
    )
    # nested objects, or the same as plain data
    made = ModelConfig(vision={"encoders": ["tiny_clip_vit"]}, llm={"name": "tiny_llama"})
    assert made == ModelConfig(
        VisionConfig([EncoderSpec("tiny_clip_vit")]), LLMConfig("tiny_llama")
    )
    assert made.tokenizer.source == "llm"


def test_replace_checks_the_changed_config():
    config = tiny_config()
    assert _problems(config.replace, **{"vision.encoders.0.image_size": "big"}) == (
        "vision.encoders[0].image_size: expected an integer, got 'big'",
    )
    assert _problems(config.replace, **{"vision.encoders.7.name": "x"}) == (
        "vision.encoders.7.name: '7' is not an index of a list of 2 item(s) (0 to 1)",
    )
    assert config.replace(**{"llm.pretrained": False}).llm.pretrained is False


# -- run configs ---------------------------------------------------------------------------------


def test_a_bad_train_field_is_named_by_its_path():
    assert _problems(RunConfig.from_dict, {"train": {"max_steps": "ten"}}) == (
        "train.max_steps: expected an integer, got 'ten'",
    )
    assert _problems(RunConfig.from_dict, {"train": {"max_steps": 0, "lr": float("inf")}}) == (
        "train.max_steps must be at least 1, got 0",
        "train.lr must be a finite number, got inf",
    )
    assert _problems(RunConfig.from_dict, {"train": {"global_batch_size": True, "lr": -1}}) == (
        "train.global_batch_size: expected an integer, got True",
        "train.lr must be positive, got -1",
    )
    assert _problems(RunConfig.from_dict, {"train": {"lrate": 1e-3}}) == (
        "train: unknown field 'lrate' (did you mean 'lr'?)",
    )
    assert _problems(RunConfig.from_dict, {"train": {"stage": "warmup"}})[0].startswith(
        "train.stage: Unknown stage 'warmup'; expected one of ["
    )
    assert _problems(TrainConfig, max_steps="ten") == ("max_steps: expected an integer, got 'ten'",)
    # YAML 1.1 reads 1e-3 as text; it is still the number it reads as
    assert RunConfig.from_dict({"train": {"lr": "1e-3"}}).train.lr == 1e-3


def test_run_config_fields_are_typed():
    assert _problems(
        RunConfig.from_dict,
        {
            "model": 3,
            "data": ["a.jsonl:2", {"path": "b.jsonl", "weigth": 2}, {"weight": 0}],
            "eval_limit": 0,
            "on_error": "ignore",
            "synthetic": {"seed": 0, "train": 10, "val": 2, "round": 1},
        },
    ) == (
        "model: expected a preset name, a model config file or a model config mapping, got 3",
        "data[1]: unknown field 'weigth' (did you mean 'weight'?)",
        "data[2].path: field required",
        "data[2].weight must be positive, got 0",
        "eval_limit must be at least 1, got 0",
        "synthetic: unknown field 'round' (did you mean 'multi_round'?)",
        "on_error must be 'raise' or 'skip', got 'ignore'",
    )
    assert _problems(RunConfig.from_dict, {"grounding": {"steps": "x"}}) == (
        "grounding.steps: expected an integer, got 'x'",
    )


def test_a_run_config_file_names_itself_and_resolves_relative_paths(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: demo\ndata: [{path: d.jsonl, images: imgs}, 'e.jsonl:2']\n"
        "train: {max_steps: 10, lr: 1e-3}\n"
    )
    run = RunConfig.from_yaml_file(path)
    assert [(s.path, s.weight, s.images) for s in run.data] == [
        (tmp_path / "d.jsonl", 1.0, tmp_path / "imgs"),
        (tmp_path / "e.jsonl", 2.0, None),
    ]
    assert run.train.max_steps == 10 and run.train.lr == 1e-3
    path.write_text("train: {max_steps: ten}\n")
    assert _problems(RunConfig.from_yaml_file, path) == (
        f"{path}: train.max_steps: expected an integer, got 'ten'",
    )
    path.write_text("train: [\n")
    assert _problems(RunConfig.from_yaml_file, path)[0].startswith(f"{path}: not valid YAML")


def test_a_run_config_round_trips_and_settings_are_checked():
    run = demo_run_config()
    assert RunConfig.from_dict(run.to_dict()) == run
    assert run.with_settings(["max_steps=7", "lr=1e-3"]).train.max_steps == 7
    assert _problems(run.with_settings, ["max_steps=ten"]) == (
        "train.max_steps: expected an integer, got 'ten'",
    )
    assert _problems(run.with_settings, ["model.vision.encoders.0.image_size=big"]) == (
        "model.vision.encoders[0].image_size: expected an integer, got 'big'",
    )


def test_a_data_source_keeps_its_api_and_names_its_file(tmp_path):
    source = DataSource.parse("train.jsonl:2", images=tmp_path)
    assert (source.path.name, source.weight, source.images) == ("train.jsonl", 2.0, tmp_path)
    assert source.image_root == tmp_path and source.name == "train"
    assert source.image_path("a.png") == tmp_path / "a.png"
    assert hash(source) == hash(DataSource.parse("train.jsonl:2", images=tmp_path))
    assert _problems(DataSource.parse, "train.jsonl:0") == (
        "data train.jsonl: weight must be positive, got 0.0",
    )
    assert _problems(DataSource, tmp_path / "a.jsonl", 1.0, None, "yes") == (
        f"data {tmp_path / 'a.jsonl'}: images_outside_root: expected true or false, got 'yes'",
    )
