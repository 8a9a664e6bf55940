"""Local weights for every family: save, load through `create_encoder(pretrained=path)`, equal
outputs; the file layouts we read; clear errors for weights that do not fit."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from sphinx_mllm.encoders import WeightsMismatchError, create_encoder, list_encoders
from sphinx_mllm.encoders.weights import find_weight_files


def outputs(encoder):
    pixels = torch.randn(2, 3, *encoder.input_size, generator=torch.Generator().manual_seed(0))
    return encoder(pixels).tokens


@pytest.mark.parametrize("name", list_encoders("tiny_*"))
def test_saved_weights_load_back_to_equal_outputs(tmp_path, name):
    torch.manual_seed(11)
    original = create_encoder(name)
    path = original.save_weights(tmp_path / "weights.safetensors")
    torch.manual_seed(12)  # a different random initialisation, replaced by the file
    reloaded = create_encoder(name, pretrained=path)
    assert torch.equal(outputs(original), outputs(reloaded))
    assert reloaded.frozen


@pytest.mark.parametrize("name", ["tiny_clip_vit", "tiny_dinov2", "tiny_blip2_qformer"])
def test_weights_load_into_an_encoder_built_on_the_meta_device(tmp_path, name):
    original = create_encoder(name)
    path = original.save_weights(tmp_path / "weights.safetensors")
    reloaded = create_encoder(name, pretrained=path, device="meta")
    assert not any(tensor.is_meta for tensor in reloaded.state_dict().values())
    for key, tensor in original.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[key], tensor), key


def test_weights_are_converted_to_the_requested_dtype(tmp_path):
    path = create_encoder("tiny_clip_vit").save_weights(tmp_path / "w.safetensors")
    encoder = create_encoder("tiny_clip_vit", pretrained=path, dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    assert outputs(encoder).dtype == torch.bfloat16


def test_pytorch_pickle_loads_with_weights_only_and_unwraps_state_dict(tmp_path):
    original = create_encoder("tiny_dinov2")
    torch.save({"state_dict": original.model.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    reloaded = create_encoder("tiny_dinov2", pretrained=tmp_path / "checkpoint.pth")
    assert torch.equal(outputs(original), outputs(reloaded))


class Payload:
    """Stands for the arbitrary object a malicious pickle would carry."""


def test_a_pickle_holding_objects_is_refused(tmp_path):
    torch.save({"weights": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        create_encoder("tiny_dinov2", pretrained=tmp_path / "evil.pt")


def test_sharded_safetensors_directory_loads(tmp_path):
    original = create_encoder("tiny_hf_clip")
    state = {key: value.contiguous() for key, value in original.model.state_dict().items()}
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({key: state[key] for key in shard_keys}, str(tmp_path / shard))
        weight_map.update(dict.fromkeys(shard_keys, shard))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert len(find_weight_files(tmp_path)) == 2
    assert torch.equal(
        outputs(original), outputs(create_encoder("tiny_hf_clip", pretrained=tmp_path))
    )


def test_keys_that_do_not_fit_are_named(tmp_path):
    state = {
        key: value.clone()
        for key, value in create_encoder("tiny_clip_vit").model.state_dict().items()
    }
    del state["ln_post.weight"]
    state["extra.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsMismatchError) as raised:
        create_encoder("tiny_clip_vit", pretrained=tmp_path / "bad.safetensors")
    message = str(raised.value)
    assert "missing keys: ln_post.weight" in message
    assert "unexpected keys: extra.bias" in message
    assert "bad.safetensors" in message


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path):
    state = {
        key: value.clone()
        for key, value in create_encoder("tiny_clip_vit").model.state_dict().items()
    }
    state["ln_post.weight"] = torch.ones(7)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        WeightsMismatchError, match=r"wrong shape keys: ln_post.weight: \(7,\) in the file, \(32,\)"
    ):
        create_encoder("tiny_clip_vit", pretrained=tmp_path / "bad.safetensors")


def test_missing_paths_and_empty_directories_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="No weights file or directory"):
        create_encoder("tiny_clip_vit", pretrained=str(tmp_path / "nowhere.safetensors"))
    (tmp_path / "notes.txt").write_text("no weights here")
    with pytest.raises(FileNotFoundError, match=r"found \['notes.txt'\]"):
        create_encoder("tiny_clip_vit", pretrained=tmp_path)


def test_an_unknown_open_clip_tag_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"no pretrained tag 'nonsense' for ViT-L-14; known: .*openai"
    ):
        create_encoder("clip_vit_l14", pretrained="nonsense", device="meta")


def test_a_tiny_preset_has_no_default_source():
    with pytest.raises(ValueError, match="no default pretrained source"):
        create_encoder("tiny_clip_vit", pretrained=True)


OFFLINE_FETCH = """
import sys
from sphinx_mllm.encoders import create_encoder
try:
    create_encoder(sys.argv[1], pretrained=True, device="meta")
except RuntimeError as error:
    print(error)
"""


@pytest.mark.parametrize("name", ["clip_vit_b16", "dinov2_vitb14", "blip2_qformer_opt2_7b"])
def test_library_sources_fail_clearly_without_network(name):
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME="/nonexistent-hf-home")
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_FETCH, name],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{name}: could not" in result.stdout
    assert "Pass pretrained=<local file or directory> instead" in result.stdout
