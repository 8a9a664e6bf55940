"""`load_llm` and the language model presets: real sizes on the meta device against transformers'
own classes, tiny presets trained and sampled in bf16, directories round-tripped, errors named."""

import os
import subprocess
import sys

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from sphinx_mllm.core import UnknownComponentError
from sphinx_mllm.llm.backbones import SUPPORTED_FAMILIES, load_llm
from sphinx_mllm.llm.language_models import (
    LANGUAGE_MODELS,
    get_language_model,
    list_language_models,
)
from tests.registry_contract import check_list_and_get

# Published sizes (the Hugging Face repositories' own counts); untied embeddings except Qwen2-1.5B.
PUBLISHED_PARAMETERS = {
    "llama2_7b": 6_738_415_616,
    "llama2_13b": 13_015_864_320,
    "tinyllama_1_1b": 1_100_048_384,
    "mistral_7b": 7_241_732_096,
    "qwen2_7b": 7_615_616_512,
    "qwen2_1_5b": 1_543_714_304,
    "mixtral_8x7b": 46_702_792_704,
}
TRANSFORMERS_CLASSES = {
    "llama": transformers.LlamaForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "mixtral": transformers.MixtralForCausalLM,
}
TINY_PRESETS = list_language_models("tiny_*")


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_language_models_registry_keeps_the_contract():
    check_list_and_get(LANGUAGE_MODELS, list_language_models, get_language_model)


def test_every_family_has_a_real_size_and_a_tiny_preset():
    assert set(PUBLISHED_PARAMETERS) <= set(list_language_models())
    tiny_families = {get_language_model(name)().model_type for name in TINY_PRESETS}
    assert tiny_families == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_real_size_preset_matches_transformers_and_its_published_size(name):
    model, tokenizer = load_llm(name, device="meta", dtype=torch.bfloat16)
    config = get_language_model(name)()
    with torch.device("meta"):
        reference = TRANSFORMERS_CLASSES[config.model_type](config)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert parameter_count(model) == parameter_count(reference) == PUBLISHED_PARAMETERS[name]
    assert tokenizer is None
    assert {parameter.device.type for parameter in model.parameters()} == {"meta"}
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_llama2_13b_is_sphinx_llm():
    config = get_language_model("llama2_13b")()
    shape = (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
    )
    assert shape == (5120, 40, 40, 13824, 32000)
    assert config.rms_norm_eps == 1e-5
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert not config.tie_word_embeddings
    model, _ = load_llm("llama2_13b", device="meta")
    assert parameter_count(model) == 13_015_864_320


def test_tinyllama_is_1_1b_with_grouped_query_attention():
    model, _ = load_llm("tinyllama_1_1b", device="meta")
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (
        2048,
        22,
        5632,
    )
    assert (config.num_attention_heads, config.num_key_value_heads) == (32, 4)
    assert round(parameter_count(model) / 1e9, 1) == 1.1


@pytest.mark.parametrize("name", list_language_models())
def test_conformance_every_preset_builds_on_meta(name):
    """Registering a language model preset is enough to have it checked here."""
    assert LANGUAGE_MODELS.info(name).summary
    config = get_language_model(name)()
    assert isinstance(config, transformers.PreTrainedConfig)
    assert config.model_type in SUPPORTED_FAMILIES
    model, tokenizer = load_llm(name, device="meta")
    assert isinstance(model, transformers.PreTrainedModel)
    assert isinstance(model, transformers.GenerationMixin)
    assert tokenizer is None
    assert model.get_input_embeddings().weight.shape == (config.vocab_size, config.hidden_size)
    assert {parameter.device.type for parameter in model.parameters()} == {"meta"}


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_preset_builds_in_bf16_trains_and_generates(name, monkeypatch):
    created = []
    original_new = torch.nn.Parameter.__new__

    def recording_new(cls, data=None, requires_grad=True):
        created.append(None if data is None else data.dtype)
        return original_new(cls, data, requires_grad)

    monkeypatch.setattr(torch.nn.Parameter, "__new__", staticmethod(recording_new))
    model, tokenizer = load_llm(name, dtype=torch.bfloat16, device="cpu")
    monkeypatch.undo()
    assert created and set(created) == {torch.bfloat16}, f"{name} created parameters {created}"
    assert tokenizer is None
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=generator)
    model.train()
    output = model(input_ids=ids, labels=ids)
    assert output.logits.shape == (2, 12, model.config.vocab_size)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    embeddings = model.get_input_embeddings().weight
    assert embeddings.grad is not None and embeddings.grad.dtype == torch.bfloat16
    assert embeddings.grad.abs().sum() > 0

    model.eval()
    prompt = ids[:1, :6]
    with torch.no_grad():
        expected_first = model(input_ids=prompt).logits[0, -1].argmax()
        generated = model.generate(
            prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0
        )
    assert generated.shape == (1, 10)
    assert torch.equal(generated[0, :6], prompt[0])
    assert generated[0, 6] == expected_first


def save_word_tokenizer(directory, vocab_size: int) -> None:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(directory)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_saved_directory_loads_with_equal_logits(name, tmp_path):
    model, _ = load_llm(name)
    model.save_pretrained(tmp_path)
    ids = torch.arange(3, 19).reshape(2, 8)

    loaded, tokenizer = load_llm(tmp_path)
    assert tokenizer is None
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)

    into_preset, _ = load_llm(name, pretrained=tmp_path)
    in_bf16, _ = load_llm(str(tmp_path), dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(into_preset(input_ids=ids).logits, model(input_ids=ids).logits)
    assert {parameter.dtype for parameter in in_bf16.parameters()} == {torch.bfloat16}


def test_directory_tokenizer_is_loaded_and_architecture_alone_on_meta(tmp_path):
    model, _ = load_llm("tiny_llama")
    model.save_pretrained(tmp_path)
    save_word_tokenizer(tmp_path, model.config.vocab_size)
    _, tokenizer = load_llm(tmp_path)
    assert tokenizer("w5 w7")["input_ids"][-2:] == [5, 7]
    on_meta, tokenizer = load_llm(tmp_path, device="meta", pretrained=False)
    assert tokenizer is None and on_meta.device.type == "meta"
    with pytest.raises(ValueError, match="meta device"):
        load_llm(tmp_path, device="meta")


def test_overrides_rederive_dependent_fields_and_reject_unknown_ones():
    qwen2, _ = load_llm("qwen2_7b", device="meta", num_hidden_layers=2)
    assert len(qwen2.model.layers) == len(qwen2.config.layer_types) == 2
    llama, _ = load_llm("llama2_13b", device="meta", hidden_size=64, num_attention_heads=4)
    assert llama.config.head_dim == 16
    eager, _ = load_llm("tiny_llama", attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    with pytest.raises(TypeError, match="num_hidden_layers"):
        load_llm("tiny_llama", num_hidden_layer=3)


def test_unknown_preset_lists_close_matches():
    with pytest.raises(UnknownComponentError, match="Did you mean: llama2_13b"):
        load_llm("llama2-13b")


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="no pretrained weights"):
        load_llm("tiny_llama", pretrained=True)
    with pytest.raises(FileNotFoundError, match=r"No config\.json"):
        load_llm(tmp_path)
    with pytest.raises(FileNotFoundError, match="No model directory"):
        load_llm(tmp_path / "missing")
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt2' model; supported families"):
        load_llm(tmp_path)
    (tmp_path / "config.json").unlink()
    transformers.LlamaConfig().save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"No \*\.safetensors weights"):
        load_llm(tmp_path)


def test_hub_id_offline_fails_with_a_clear_message(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    program = "from sphinx_mllm.llm.backbones import load_llm; load_llm('meta-llama/Llama-2-7b-hf')"
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("OSError: Could not load 'meta-llama/Llama-2-7b-hf'")
    assert "offline" in message and "pass the local model directory" in message
