"""save_pretrained / from_pretrained: identical logits, atomic writes, clear errors."""

import json

import pytest
import torch

from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.pipeline import checkpoint as checkpoint_module
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.model import SphinxModel
from tests.pipeline.conftest import tiny_config

N = 19


def _inputs():
    ids = torch.randint(3, 250, (2, 6 + N))
    ids[:, 1 : 1 + N] = 256
    return ids, torch.rand(2, 1, 3, 32, 32)


def test_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config())
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SphinxModel.from_pretrained(tmp_path / "ckpt")
    ids, views = _inputs()
    assert torch.equal(model(ids, views).logits, loaded(ids, views).logits)
    assert loaded.model_config.replace(**{"llm.config": None}) == model.model_config
    assert loaded.model_config.llm.config["num_hidden_layers"] == model.llm.config.num_hidden_layers
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        ".sphinx-output.json",  # the marker that lets a later save with overwrite replace it
        "config.json",
        "model.safetensors",
        "processor_config.json",
    ]


def test_demo_round_trip_keeps_the_tokenizer_and_sharding_works(tmp_path):
    model = build_model("demo")
    model.save_pretrained(tmp_path / "ckpt", shard_bytes=1_000_000)
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    loaded = SphinxModel.from_pretrained(tmp_path / "ckpt")
    text = "What colour is the circle? [0.10,0.20,0.30,0.40]"
    assert loaded.tokenizer(text)["input_ids"] == model.tokenizer(text)["input_ids"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_tied_embeddings_are_stored_once(tmp_path):
    model = build_model(tiny_config(**{"llm.name": "tiny_qwen2"}))
    model.save_pretrained(tmp_path / "ckpt")
    from safetensors import safe_open

    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as stored:
        names = set(stored.keys())
    assert "llm.model.embed_tokens.weight" in names and "llm.lm_head.weight" not in names
    loaded = SphinxModel.from_pretrained(tmp_path / "ckpt")
    ids, views = _inputs()
    assert torch.equal(model(ids, views).logits, loaded(ids, views).logits)


def test_frozen_pretrained_encoders_are_referenced_not_copied(tmp_path):
    from sphinx_mllm.encoders import create_encoder

    weights = create_encoder("tiny_clip_vit").save_weights(tmp_path / "clip.safetensors")
    config = tiny_config(**{"vision.encoders.0.options": {"pretrained": str(weights)}})
    model = build_model(config)
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (prefix, entry), *others = config["referenced_encoders"].items()
    assert prefix == "visual.encoders.tiny_clip_vit" and not others
    assert entry["source"] == str(weights) and len(entry["sha256"]) == 64
    from safetensors import safe_open

    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as stored:
        assert not any(key.startswith("visual.encoders.tiny_clip_vit.") for key in stored.keys())  # noqa: SIM118 (safe_open is not iterable)
    loaded = SphinxModel.from_pretrained(tmp_path / "ckpt")
    ids, views = _inputs()
    assert torch.equal(model(ids, views).logits, loaded(ids, views).logits)
    torch.manual_seed(1)  # the source now holds other weights: the checksum says so
    create_encoder("tiny_clip_vit").save_weights(tmp_path / "clip.safetensors")
    with pytest.raises(CheckpointError, match=r"visual\.encoders\.tiny_clip_vit rebuilt from"):
        SphinxModel.from_pretrained(tmp_path / "ckpt")


def test_an_existing_directory_is_refused_unless_overwritten(tmp_path):
    model = build_model(tiny_config())
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="ckpt exists"):
        model.save_pretrained(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "ckpt", overwrite=True)


def test_an_interrupted_save_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    model = build_model(tiny_config())

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "_write_weights", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_a_missing_file_is_named(tmp_path, missing):
    build_model(tiny_config()).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / missing).unlink()
    with pytest.raises((CheckpointError, FileNotFoundError), match=missing.split(".")[0]):
        SphinxModel.from_pretrained(tmp_path / "ckpt")


def test_weights_that_do_not_fit_the_config_are_listed(tmp_path):
    build_model(tiny_config()).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    saved = json.loads(path.read_text())

    def edit(**changes):
        config = json.loads(json.dumps(saved))
        config["model"]["llm"]["config"].update(changes)
        path.write_text(json.dumps(config))

    edit(num_hidden_layers=1, layer_types=["full_attention"])
    with pytest.raises(CheckpointError, match=r"not in the model \(9\): llm\.model\.layers\.1\."):
        SphinxModel.from_pretrained(tmp_path / "ckpt")
    edit(intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"shape mismatch: llm\.model\.layers\.0\.mlp"):
        SphinxModel.from_pretrained(tmp_path / "ckpt")


def test_a_truncated_weights_file_is_refused(tmp_path):
    build_model(tiny_config()).save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        SphinxModel.from_pretrained(tmp_path / "ckpt")


def test_an_llm_given_as_an_object_comes_back_as_the_same_architecture(tmp_path):
    """Non-default rope_theta, grouped-query attention and tied embeddings: the checkpoint
    saves the LLM's whole config, not the preset name the model config carries."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    architecture = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, rope_theta=500000.0, tie_word_embeddings=True,
    )  # fmt: skip
    model = build_model(tiny_config(), components={"llm": LlamaForCausalLM(architecture)})
    assert model.model_config.llm.name == "tiny_llama"  # what a rebuild from the name would give
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SphinxModel.from_pretrained(tmp_path / "ckpt")
    ids, views = _inputs()
    assert torch.equal(model(ids, views).logits, loaded(ids, views).logits)
    config = loaded.llm.config
    assert config.rope_parameters["rope_theta"] == 500000.0
    assert (config.num_key_value_heads, config.intermediate_size) == (2, 96)
    assert config.tie_word_embeddings
    assert loaded.llm.lm_head.weight.data_ptr() == loaded.llm.model.embed_tokens.weight.data_ptr()


def test_an_llm_that_transformers_would_not_rebuild_is_refused(tmp_path):
    from transformers import LlamaForCausalLM

    class MyLlama(LlamaForCausalLM):
        pass

    base = build_model(tiny_config())
    model = build_model(tiny_config(), components={"llm": MyLlama(base.llm.config)})
    with pytest.raises(ValueError, match="The LLM is a MyLlama, but AutoModelForCausalLM builds"):
        model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_a_format_1_checkpoint_loads_and_saves_as_format_2(tmp_path):
    """Format 1: config.yaml (the preset name), checkpoint.json, tokenizer/."""
    import shutil

    torch.manual_seed(0)
    model = build_model("demo")
    model.save_pretrained(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tmp_path / "new" / "model.safetensors", old)
    model.model_config.save(old / "config.yaml")
    manifest = {"format_version": 1, "tied": {}, "referenced_encoders": {}}
    (old / "checkpoint.json").write_text(json.dumps(manifest))
    model.tokenizer.save_pretrained(old / "tokenizer")
    loaded = SphinxModel.from_pretrained(old)
    batch = model.processor([[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes"}]])
    assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded.processor.template == model.processor.template
    from tests.command_line import sphinx_pipeline

    outcome = sphinx_pipeline("convert-checkpoint", old, tmp_path / "converted")
    assert outcome.status == 0, outcome.stderr
    assert "(format 1) ->" in outcome.stdout
    converted = tmp_path / "converted"
    assert (converted / "config.json").is_file() and not (converted / "config.yaml").exists()
    again = SphinxModel.from_pretrained(converted)
    assert torch.equal(model(**batch).logits, again(**batch).logits)


def test_the_auto_classes_load_a_checkpoint(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from sphinx_mllm.pipeline.hf_config import SphinxConfig
    from sphinx_mllm.pipeline.processor import SphinxProcessor

    torch.manual_seed(0)
    model = build_model("demo", placement="prefix")
    model.save_pretrained(tmp_path / "ckpt")
    config = AutoConfig.from_pretrained(tmp_path / "ckpt")
    assert isinstance(config, SphinxConfig) and config.model_config.placement == "prefix"
    processor = AutoProcessor.from_pretrained(tmp_path / "ckpt")
    assert isinstance(processor, SphinxProcessor) and processor.placement == "prefix"
    batch = processor([[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes"}]])
    for auto in (AutoModel, AutoModelForImageTextToText):
        loaded = auto.from_pretrained(tmp_path / "ckpt")
        assert isinstance(loaded, SphinxModel)
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    random = AutoModel.from_config(config)
    assert isinstance(random, SphinxModel) and random.num_visual_tokens() == 67


def test_an_encoder_digest_is_kept_until_its_weights_change():
    from sphinx_mllm.encoders import create_encoder
    from sphinx_mllm.pipeline.checkpoint import weights_digest

    encoder = create_encoder("tiny_clip_vit")
    first = weights_digest(encoder)
    assert weights_digest(encoder) == first
    with torch.no_grad():
        next(encoder.parameters()).add_(1.0)
    assert weights_digest(encoder) != first
