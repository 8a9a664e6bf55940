"""Swapping components by name: the same config with another encoder set or projector trains one
step and generates."""

import pytest
import torch
from PIL import Image

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.generation import generate
from sphinx_mllm.pipeline.stages import apply_stage
from tests.pipeline.conftest import tiny_config

SWAPS = {
    "as configured": {},
    "another encoder set": {
        "vision.encoders": [
            {"name": "tiny_siglip", "image_size": 32},
            {"name": "tiny_timm_convnet", "image_size": 64},
        ]
    },
    "another projector": {"vision.mixer_options": {"projector": "mlp2x_gelu"}},
    "another mixer": {"vision.mixer": "sequence_concat"},
    "SPHINX placement": {"placement": "prefix"},
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_a_swapped_model_trains_one_step_and_generates(swap):
    torch.manual_seed(0)
    config = tiny_config(**{"tokenizer.source": "demo", "llm.overrides": {"vocab_size": 768}})
    model = build_model(config.replace(**SWAPS[swap]))
    trainable = apply_stage(model, "finetune")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    turns = [{"from": "human", "value": "<image>\nWhat colour is the square?"}]
    batch = model.processor([[*turns, {"from": "gpt", "value": "red"}]], [[image]])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    prompt = model.processor([turns], [[image]], generation=True)
    output = generate(model, **prompt, max_new_tokens=4)
    assert output.sequences.shape[0] == 1 and 1 <= int(output.lengths[0]) <= 4
