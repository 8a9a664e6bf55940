"""Sweep of the encoder registry: every registered encoder at its real size on the meta device,
and every tiny one on the CPU. A plugin encoder is swept just by being registered."""

import pytest
import torch

from sphinx_mllm.encoders import ENCODERS, EncoderOutput, VisualEncoder, list_encoders
from tests.encoders.conformance import check_encoder, check_runs_and_trains


@pytest.mark.parametrize("name", list_encoders())
def test_registered_encoder_conforms(name):
    check_encoder(name)


@pytest.mark.parametrize("name", list_encoders("tiny_*"))
def test_tiny_encoder_runs_in_bf16_and_trains_when_unfrozen(name):
    check_runs_and_trains(name)


def test_every_family_has_a_tiny_preset():
    tiny = set(list_encoders("tiny_*"))
    families = {
        "tiny_clip_vit",
        "tiny_clip_convnext",
        "tiny_dinov2",
        "tiny_dinov2_reg4",
        "tiny_siglip",
        "tiny_timm_convnet",
        "tiny_hf_clip",
        "tiny_hf_siglip",
        "tiny_hf_dinov2",
        "tiny_blip2_qformer",
    }
    assert families <= tiny


class _PoolingEncoder(VisualEncoder):
    """A plugin-style encoder: 4x4 average-pooled pixels as 3-channel tokens."""

    def __init__(self, declared_tokens_bias: int = 0) -> None:
        super().__init__(
            name="plugin_pool",
            input_size=16,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            embed_dim=3,
            leading_token=False,
        )
        self.model = torch.nn.Conv2d(3, 3, 4, stride=4)
        self.bias = declared_tokens_bias
        self.freeze()

    def grid_size(self, image_size=None):
        size = self._size(image_size)
        self._require_multiple(size, (4, 4), "stride")
        return size[0] // 4 + self.bias, size[1] // 4

    def _encode(self, pixels):
        return self.model(pixels).flatten(2).transpose(1, 2)


def _plugin_factory(bias):
    def factory(pretrained=None, *, device=None, dtype=None, frozen=True):
        with torch.device(device or "cpu"):
            encoder = _PoolingEncoder(bias).to(dtype=dtype or torch.float32)
        return encoder if frozen else encoder.unfreeze()

    return factory


def test_a_registered_plugin_encoder_is_swept_and_a_wrong_one_fails():
    ENCODERS.register("zz_plugin_pool", func=_plugin_factory(0))
    ENCODERS.register("zz_plugin_liar", func=_plugin_factory(1))
    try:
        assert {"zz_plugin_pool", "zz_plugin_liar"} <= set(list_encoders())
        check_encoder("zz_plugin_pool")
        with pytest.raises(RuntimeError, match=r"produced tokens of shape .* but declares"):
            check_encoder("zz_plugin_liar")
    finally:
        ENCODERS.unregister("zz_plugin_pool")
        ENCODERS.unregister("zz_plugin_liar")


def test_encoder_output_exposes_grid_tokens_and_map():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    output = EncoderOutput(tokens=tokens, grid=(2, 2), leading_token=True)
    assert torch.equal(output.grid_tokens, tokens[:, 1:])
    assert torch.equal(output.grid_map[:, :, 0, 1], tokens[:, 2])
    queries = EncoderOutput(tokens=tokens, grid=None, leading_token=False)
    with pytest.raises(ValueError, match="no grid"):
        _ = queries.grid_map
