"""Importing Hugging Face LLaVA checkpoints: the same logits and greedy tokens as transformers'
`LlavaForConditionalGeneration`, a config that round-trips through a checkpoint, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)
from typer.testing import CliRunner

from sphinx_mllm.encoders.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize
from sphinx_mllm.pipeline.commands.llava import import_summary
from sphinx_mllm.pipeline.llava_import import LlavaImportError, from_llava
from sphinx_mllm.pipeline.model import SphinxModel

IMAGE_TOKEN = 250
TOLERANCE = 1e-4
TOWER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def save_llava(directory, *, text_config=None, vision_config=None, **options):
    """A random (seed 0) tiny LLaVA saved as safetensors in `directory`; returns it in eval mode."""
    settings = {
        "image_token_id": IMAGE_TOKEN,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        **options,
    }
    config = LlavaConfig(
        vision_config=vision_config or CLIPVisionConfig(**TOWER),
        text_config=text_config or LlamaConfig(**TEXT),
        **settings,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    return model


def prompts(visual_tokens, batch=2, length=24):
    """Random text ids with a run of image tokens in each row, at a different place per row."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (batch, length + visual_tokens), generator=generator)
    for row in range(batch):
        start = 2 + 3 * row
        ids[row, start : start + visual_tokens] = IMAGE_TOKEN
    return ids


def pixels(batch=2, stats=(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)):
    """Views in [0, 1] and the same pixels normalised as the processor gives them."""
    views = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return views, normalize(views, *stats)


def max_logit_difference(directory, hf_model, *, batch=2):
    model = from_llava(directory)
    ids = prompts(model.num_visual_tokens(), batch)
    encoder = model.visual.encoders["hf_vision"]
    views, processed = pixels(batch, (encoder.mean, encoder.std))
    with torch.no_grad():
        expected = hf_model(input_ids=ids, pixel_values=processed).logits
        ours = model(ids, processed, normalized=True).logits
        from_views = model(ids, views.unsqueeze(1)).logits
    return max((ours - expected).abs().max().item(), (from_views - expected).abs().max().item())


# -- parity ------------------------------------------------------------------------------------


def test_logits_equal_transformers_llava_for_a_batch_of_two_images(tmp_path):
    hf_model = save_llava(tmp_path)
    assert max_logit_difference(tmp_path, hf_model, batch=2) <= TOLERANCE


def test_logits_equal_transformers_llava_for_one_image(tmp_path):
    hf_model = save_llava(tmp_path)
    assert max_logit_difference(tmp_path, hf_model, batch=1) <= TOLERANCE


def test_full_strategy_with_two_feature_layers_keeps_cls_and_concatenates(tmp_path):
    hf_model = save_llava(
        tmp_path, vision_feature_select_strategy="full", vision_feature_layer=[-2, -1]
    )
    model = from_llava(tmp_path)
    options = model.model_config.vision.encoders[0].options
    assert options["feature_layer"] == [-2, -1] and options["keep_cls"] is True
    assert model.num_visual_tokens() == 17  # CLS + a 4x4 grid
    assert max_logit_difference(tmp_path, hf_model) <= TOLERANCE


def test_siglip_tower_and_tied_qwen2_text_model(tmp_path):
    siglip = SiglipVisionConfig(**TOWER)
    qwen2 = Qwen2Config(**TEXT, tie_word_embeddings=True)
    hf_model = save_llava(
        tmp_path,
        vision_config=siglip,
        text_config=qwen2,
        vision_feature_select_strategy="full",
    )
    model = from_llava(tmp_path)
    assert model.llm.get_output_embeddings().weight is model.llm.get_input_embeddings().weight
    assert model.model_config.vision.splitter_options["fill"] == [127, 127, 127]  # SigLIP's mean
    assert max_logit_difference(tmp_path, hf_model) <= TOLERANCE


def test_the_transformers_4_52_layout_loads_too(tmp_path):
    """Checkpoints saved by transformers 4.52+ name tensors `model.language_model.*`,
    `model.vision_tower.vision_model.*` and `lm_head.*`."""
    hf_model = save_llava(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    renamed = {}
    for name, tensor in stored.items():
        name = name.replace("language_model.model.", "model.language_model.")
        name = name.replace("language_model.lm_head.", "lm_head.")
        name = name.replace("vision_tower.", "model.vision_tower.vision_model.")
        name = name.replace("multi_modal_projector.", "model.multi_modal_projector.")
        renamed[name] = tensor
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert max_logit_difference(tmp_path, hf_model) <= TOLERANCE


def test_imported_config_describes_llava_and_survives_a_checkpoint(tmp_path):
    save_llava(tmp_path / "hf")
    model = from_llava(tmp_path / "hf")
    config = model.model_config
    assert [spec.name for spec in config.vision.encoders] == ["hf_vision"]
    assert config.vision.splitter_options == {"base_size": 32}
    assert (config.vision.mixer, config.vision.mixer_options) == (
        "sequence_concat",
        {"projector": "mlp2x_gelu"},
    )
    assert config.llm.config["model_type"] == "llama" and config.llm.pretrained is False
    assert (config.placement, config.template, config.dtype) == (
        "placeholder",
        "vicuna_v1",
        "float32",
    )
    assert model.image_token_id == IMAGE_TOKEN and not model.training
    rows = dict(import_summary(model))
    assert rows["feature layer"] == "-2" and rows["visual tokens"] == "16 per image"

    model.save_pretrained(tmp_path / "sphinx")
    loaded = SphinxModel.from_pretrained(tmp_path / "sphinx")
    ids = prompts(16)
    views, _ = pixels()
    with torch.no_grad():
        assert torch.equal(
            model(ids, views.unsqueeze(1)).logits, loaded(ids, views.unsqueeze(1)).logits
        )


def test_the_tokenizer_of_the_directory_is_imported_and_saved(tmp_path):
    from sphinx_mllm.pipeline.tokenizers import demo_tokenizer

    tokenizer = demo_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    save_llava(
        tmp_path / "hf",
        text_config=LlamaConfig(**{**TEXT, "vocab_size": 768}),
        image_token_id=image_token_id,
    )
    tokenizer.save_pretrained(tmp_path / "hf")
    model = from_llava(tmp_path / "hf")
    assert model.tokenizer is not None and model.image_token_id == image_token_id
    assert model.model_config.tokenizer.image_token == "<image>"
    assert model.model_config.tokenizer.source == str((tmp_path / "hf").resolve())
    model.save_pretrained(tmp_path / "sphinx")
    loaded = SphinxModel.from_pretrained(tmp_path / "sphinx")
    assert loaded.tokenizer.convert_tokens_to_ids("<image>") == loaded.image_token_id


def test_dtype_defaults_to_the_checkpoint_and_can_be_chosen(tmp_path):
    save_llava(tmp_path)
    assert from_llava(tmp_path).dtype == torch.float32
    model = from_llava(tmp_path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.model_config.dtype == "bfloat16"
    with pytest.raises(LlavaImportError, match="dtype must be one of"):
        from_llava(tmp_path, dtype="int8")


# -- bad input ---------------------------------------------------------------------------------


def test_a_directory_without_config_json_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No config.json in {tmp_path}"):
        from_llava(tmp_path)
    with pytest.raises(FileNotFoundError, match="No LLaVA checkpoint directory"):
        from_llava(tmp_path / "absent")


def test_a_config_that_is_not_llava_is_refused(tmp_path):
    LlamaConfig(**TEXT).save_pretrained(tmp_path)
    with pytest.raises(LlavaImportError, match=r"describes a 'llama' model, not LLaVA"):
        from_llava(tmp_path)


def test_a_missing_tensor_is_named(tmp_path):
    save_llava(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    del stored["language_model.model.layers.1.mlp.up_proj.weight"]
    save_file(stored, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlavaImportError) as error:
        from_llava(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "missing from the checkpoint (1): llm.model.layers.1.mlp.up_proj.weight" in message


def test_unknown_and_misshapen_tensors_are_listed_together(tmp_path):
    save_llava(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    stored["image_newline"] = torch.zeros(64)
    stored["multi_modal_projector.linear_2.bias"] = torch.zeros(65)
    save_file(stored, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlavaImportError) as error:
        from_llava(tmp_path)
    message = str(error.value)
    assert "not in the model (1): image_newline" in message
    assert "shape mismatch: multi_modal_projector.linear_2.bias: checkpoint (65,)" in message


def test_pickled_weights_are_not_read(tmp_path):
    save_llava(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(LlavaImportError, match="PyTorch pickles are never read"):
        from_llava(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"projector_hidden_act": "relu"}, "projector_hidden_act 'relu'"),
        ({"multimodal_projector_bias": False}, "multimodal_projector_bias is false"),
    ],
)
def test_projectors_we_cannot_represent_are_refused(tmp_path, options, message):
    save_llava(tmp_path, **options)
    with pytest.raises(LlavaImportError, match=message):
        from_llava(tmp_path)


def test_default_strategy_on_a_tower_without_cls_is_refused(tmp_path):
    save_llava(tmp_path, vision_config=SiglipVisionConfig(**TOWER))
    with pytest.raises(LlavaImportError, match="has no CLS token"):
        from_llava(tmp_path)


# -- command line ------------------------------------------------------------------------------


def test_import_llava_command_writes_a_checkpoint(tmp_path):
    from sphinx_mllm.pipeline.cli import app
    from tests.command_line import sphinx_pipeline

    save_llava(tmp_path / "hf")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["import-llava", str(tmp_path / "hf"), str(out)])
    assert result.exit_code == 0, result.output
    assert "CLIPVisionModel" in result.output and "image token id" in result.output
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "sphinx"

    again = sphinx_pipeline("import-llava", tmp_path / "hf", out)
    assert again.status == 2 and "pass --force" in again.stderr
    forced = CliRunner().invoke(
        app, ["import-llava", str(tmp_path / "hf"), str(out), "--force", "--dtype", "bfloat16"]
    )
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "config.json").read_text())["model"]["dtype"] == "bfloat16"


def test_import_llava_help_shows_an_example():
    from sphinx_mllm.pipeline.cli import app

    result = CliRunner().invoke(app, ["import-llava", "--help"])
    assert result.exit_code == 0
    assert "sphinx-pipeline import-llava" in result.output


# -- generation --------------------------------------------------------------------------------


def test_greedy_generation_equals_transformers(tmp_path):
    hf_model = save_llava(tmp_path)
    model = from_llava(tmp_path)
    ids = prompts(model.num_visual_tokens())
    _, processed = pixels()
    hf_model.generation_config.eos_token_id = None  # generate all 8 tokens on both sides
    expected = hf_model.generate(
        input_ids=ids, pixel_values=processed, do_sample=False, max_new_tokens=8
    )[:, ids.shape[1] :]
    ours = model.generate(ids, processed, normalized=True, max_new_tokens=8, eos_token_id=[])
    assert ours.sequences.shape == (2, 8)
    assert torch.equal(ours.sequences, expected)
