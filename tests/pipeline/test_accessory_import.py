"""Importing LLaMA2-Accessory SPHINX releases: logit parity with the reference forward for every
llama_type, the released prompt and tokenizer, the checkpoint the command writes, and the error
each broken release gets. Releases are tiny (`accessory_reference`): real key names, two
model-parallel shards, the real image geometry."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

from sphinx_mllm.encoders.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    normalize,
    pil_to_tensor,
)
from sphinx_mllm.mixer import padded_resize
from sphinx_mllm.pipeline import SphinxModel
from sphinx_mllm.pipeline.accessory import AccessoryImportError, from_accessory, import_accessory
from sphinx_mllm.pipeline.accessory.weights import rotate_half_layout
from tests.command_line import sphinx_pipeline
from tests.pipeline.accessory_reference import (
    IMAGE_SIZE,
    IMAGE_WORDS,
    LLAMA_TYPES,
    reference_logits,
    tiny_accessory_params,
    write_accessory_release,
)

QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: cup."
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(data.coffee()).resize((320, 214))  # not square: padding matters


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """One release directory per llama_type (two shards; `llama_ens5` flat, the others
    `{"model": ...}`) with its full weights."""
    root = tmp_path_factory.mktemp("releases")
    made = {}
    for index, llama_type in enumerate(LLAMA_TYPES):
        layout = "flat" if llama_type == "llama_ens5" else "model"
        directory = root / llama_type
        made[llama_type] = (
            directory,
            write_accessory_release(directory, llama_type, seed=index, layout=layout),
        )
    return made


def prompt(model, photo, question=QUESTION):
    conversation = [{"from": "human", "value": question}, {"from": "gpt", "value": None}]
    return model.processor([conversation], [[photo]], generation=True)


def reference_image(photo, llama_type):
    """The CLIP-normalised padded square Accessory feeds its model."""
    square = padded_resize(photo, IMAGE_SIZE[llama_type])
    return normalize(pil_to_tensor(square), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).unsqueeze(0)


def parity(model, weights, llama_type, photo, *, fp16_resize):
    """max |ours - reference| over the text positions' logits."""
    inputs = prompt(model, photo)
    ids = inputs["input_ids"]
    image_words = int((ids == model.image_token_id).sum())
    assert image_words == IMAGE_WORDS[llama_type]
    assert (ids[0, 1 : 1 + image_words] == model.image_token_id).all()  # right after BOS
    text_ids = ids[ids != model.image_token_id].unsqueeze(0)
    expected = reference_logits(
        weights,
        tiny_accessory_params(llama_type),
        llama_type,
        reference_image(photo, llama_type),
        text_ids,
        fp16_resize=fp16_resize,
    )
    with torch.no_grad():
        logits = model(**inputs).logits[:, image_words:]  # from the last visual token on
    assert logits.shape == expected.shape
    return (logits - expected).abs().max().item()


@pytest.mark.parametrize("llama_type", LLAMA_TYPES)
def test_logits_equal_the_reference_forward(releases, photo, llama_type):
    directory, weights = releases[llama_type]
    model = SphinxModel.from_accessory(directory, dtype=torch.float32)
    assert parity(model, weights, llama_type, photo, fp16_resize=True) <= 1e-4


def test_the_reference_half_precision_resize_is_an_option(releases, photo):
    llama_type = "llama_ens5"
    directory, weights = releases[llama_type]
    exact = from_accessory(directory, dtype="float32", half_precision_resize=False)
    assert parity(exact, weights, llama_type, photo, fp16_resize=False) <= 1e-4
    # the option changes what the model computes: the float32 resize misses the reference
    assert parity(exact, weights, llama_type, photo, fp16_resize=True) > 1e-5


def test_clip_runs_gelu_as_released_and_quick_gelu_on_request(releases, photo):
    from open_clip.transformer import QuickGELU

    directory, weights = releases["llama_ens"]
    quick = from_accessory(directory, dtype="float32", quick_gelu=True)
    clip = quick.visual.encoders["clip_vit_l14"].model
    assert isinstance(clip.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert parity(quick, weights, "llama_ens", photo, fp16_resize=True) > 1e-3


def test_rotary_permutation_is_needed(releases):
    """Without the per-head permutation of wq/wk the text logits are far off (so the parity
    above can fail), and the permutation is the one transformers' own converter applies."""
    directory, weights = releases["llama_ens"]
    model = from_accessory(directory, dtype="float32")
    ids = torch.tensor([[1, 330, 10706, 1444, 13, 27332, 10649, 28747]])
    params = tiny_accessory_params("llama_ens")
    expected = reference_logits(weights, params, "llama_ens", None, ids)
    with torch.no_grad():
        ours = model.llm(input_ids=ids).logits
        assert (ours - expected).abs().max() <= 1e-4
        attention = model.llm.model.layers[0].self_attn
        for projection, name in ((attention.q_proj, "wq"), (attention.k_proj, "wk")):
            stored = weights[f"llma.layers.0.attention.{name}.weight"].float()
            projection.weight.copy_(stored)  # unpermuted
        assert (model.llm(input_ids=ids).logits - expected).abs().max() > 1e-2
    heads, head_dim, width = 4, 16, 64
    weight = torch.arange(heads * head_dim * width, dtype=torch.float32).reshape(-1, width)
    hf_permute = (
        weight.view(heads, head_dim // 2, 2, width).transpose(1, 2).reshape(heads * head_dim, width)
    )
    assert torch.equal(rotate_half_layout(weight, heads), hf_permute)


def test_released_prompt_and_tokenizer(releases, photo):
    """The generation prompt is the released template with the system prompt, encoded exactly
    as Accessory's SentencePiece `encode(prompt, bos=True)`, the visual tokens after BOS."""
    import sentencepiece

    directory, _ = releases["llama_ens"]
    model = from_accessory(directory, dtype="float32")
    ids = prompt(model, photo)["input_ids"][0]
    text_ids = ids[ids != model.image_token_id].tolist()
    released = f"{SYSTEM}\n\n### Human: {QUESTION}\n### Assistant:"
    reference = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    assert text_ids == [reference.bos_id(), *reference.encode(released)]
    assert model.processor.stop_strings == ("\n###",)
    assert model.model_config.placement == "prefix"
    assert model.llm.config.max_position_embeddings == 4096
    assert (model.llm.config.bos_token_id, model.llm.config.eos_token_id) == (1, 2)


def test_released_decoding_defaults(releases):
    directory, _ = releases["llama_ens5"]
    config = from_accessory(directory, dtype="float32").model_config
    assert (config.generation.temperature, config.generation.top_p) == (0.1, 0.75)


def test_import_command_writes_a_checkpoint_that_loads_equal(releases, photo, tmp_path):
    directory, _ = releases["llama_ens5_light"]
    out = tmp_path / "tiny-1k"
    result = sphinx_pipeline("import-accessory", directory, out, "--dtype", "float32")
    assert result.status == 0, result.stderr
    assert "Imported" in result.stdout and "global_grid" in result.stdout
    loaded = SphinxModel.from_pretrained(out)
    direct = from_accessory(directory, dtype="float32")
    for name, tensor in direct.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    inputs = prompt(loaded, photo)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, direct(**prompt(direct, photo)).logits)
    assert loaded.model_config.vision == direct.model_config.vision
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "sphinx"
    # a second run does not overwrite what exists
    again = sphinx_pipeline("import-accessory", directory, out)
    assert again.status == 2 and len(again.error_lines) == 1
    assert "exists" in again.error_lines[0]


def test_bfloat16_by_default_and_streamed_in_small_pieces(releases, tmp_path):
    """The default dtype is the release's; reopening the shards after every few kilobytes read
    (what bounds memory on a real release) changes nothing in the output."""
    directory, _ = releases["llama_ens"]
    big = import_accessory(directory, tmp_path / "a")
    small = import_accessory(directory, tmp_path / "b", reopen_bytes=4096)
    assert (big / "model.safetensors").read_bytes() == (small / "model.safetensors").read_bytes()
    assert json.loads((big / "config.json").read_text())["model"]["dtype"] == "bfloat16"


# -- broken releases -------------------------------------------------------------------------------


def copy_release(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def edit_shards(directory: Path, edit) -> None:
    for path in sorted(directory.glob("consolidated.*.model.pth")):
        state = torch.load(path, weights_only=True)
        state = state.get("model", state)
        edit(path.name, state)
        torch.save({"model": state}, path)


def import_error(directory: Path, tmp_path: Path) -> str:
    with pytest.raises((AccessoryImportError, FileNotFoundError)) as caught:
        import_accessory(directory, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return str(caught.value)


def test_a_missing_shard_is_named(releases, tmp_path):
    directory = copy_release(releases["llama_ens"][0], tmp_path / "release")
    (directory / "consolidated.01-of-02.model.pth").unlink()
    assert "consolidated.01-of-02.model.pth" in import_error(directory, tmp_path)


def test_unknown_and_missing_tensors_are_named(releases, tmp_path):
    directory = copy_release(releases["llama_ens"][0], tmp_path / "release")

    def edit(_, state):
        state["llma.extra_head.weight"] = torch.zeros(2, dtype=torch.bfloat16)
        del state["llma.layers.1.ffn_norm.weight"]

    edit_shards(directory, edit)
    message = import_error(directory, tmp_path)
    assert "llma.extra_head.weight" in message
    assert "llm.model.layers.1.post_attention_layernorm.weight" in message


def test_differing_replicas_are_refused(releases, tmp_path):
    directory = copy_release(releases["llama_ens"][0], tmp_path / "release")

    def edit(name, state):
        if name.startswith("consolidated.01"):
            state["llma.visual_proj.1.bias"] += 1

    edit_shards(directory, edit)
    message = import_error(directory, tmp_path)
    assert "visual_proj.1.bias" in message and "consolidated.01-of-02" in message


def test_config_that_contradicts_the_tensors_is_refused(releases, tmp_path):
    directory = copy_release(releases["llama_ens"][0], tmp_path / "release")
    params = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**params, "n_layers": 3}))
    assert "n_layers is 3" in import_error(directory, tmp_path)
    (directory / "config.json").write_text(json.dumps({**params, "multiple_of": 100}))
    assert "feed_forward.w1" in import_error(directory, tmp_path)
    (directory / "meta.json").write_text(json.dumps({"llama_type": "mixtral_sparse_ens"}))
    assert "mixtral_sparse_ens" in import_error(directory, tmp_path)


class Payload:
    """Unpickling this would write a file: a shard must never run it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


def test_a_shard_with_code_in_its_pickle_is_never_run(releases, tmp_path):
    directory = copy_release(releases["llama_ens"][0], tmp_path / "release")
    marker = tmp_path / "marker"
    shard = directory / "consolidated.00-of-02.model.pth"
    state = torch.load(shard, weights_only=True)
    state["llma.payload"] = Payload(marker)
    torch.save(state, shard)
    assert "refused to unpickle" in import_error(directory, tmp_path)
    assert not marker.exists()
