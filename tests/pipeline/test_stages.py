"""Training stages: freeze sets, counts, and one optimisation step changing exactly them."""

import pytest
import torch

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.stages import STAGES, Stage, apply_stage, trainable_parameter_count
from tests.pipeline.conftest import tiny_config

N = 19


def _step(model):
    ids = torch.randint(3, 250, (2, 6 + N))
    ids[:, 1 : 1 + N] = 256
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(ids, torch.rand(2, 1, 3, 32, 32), labels=ids).loss.backward()
    optimizer.step()
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


@pytest.mark.parametrize("stage", ["align", "pretrain", "full"])
def test_one_step_changes_exactly_the_trainable_parameters(stage):
    torch.manual_seed(0)
    model = build_model(tiny_config())
    trainable = set(apply_stage(model, stage))
    assert len(trainable) and sum(
        p.numel() for n, p in model.named_parameters() if n in trainable
    ) == trainable_parameter_count(model, stage)
    changed = _step(model)
    with_gradient = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()
    }  # (open_clip's unused output projection gets none; tiny steps may round away)
    assert changed <= trainable and with_gradient <= trainable
    assert len(changed) >= 0.9 * len(trainable)
    encoders = {n for n in trainable if n.startswith("visual.encoders.")}
    assert bool(encoders) == (stage == "full")
    if stage == "align":
        assert all(n.startswith("visual.mixer.") for n in trainable)


def test_stage_freeze_sets():
    model = build_model(tiny_config())
    names = [n for n, _ in model.named_parameters()]
    assert set(apply_stage(model, "align")) == {n for n in names if n.startswith("visual.mixer.")}
    assert "visual.mixer.format.start" in apply_stage(model, "align")
    pretrain = set(apply_stage(model, "pretrain"))
    assert pretrain == {n for n in names if not n.startswith("visual.encoders.")}
    assert set(apply_stage(model, "finetune")) == pretrain
    assert all(encoder.frozen for encoder in model.visual.encoders.values())
    assert set(apply_stage(model, "full")) == set(names)
    assert not any(encoder.frozen for encoder in model.visual.encoders.values())
    custom = Stage("head", ("llm.lm_head.*",))
    assert apply_stage(model, custom) == ["llm.lm_head.weight"]


def test_unknown_stage_lists_the_known_ones():
    with pytest.raises(ValueError, match="align"):
        apply_stage(build_model(tiny_config()), "warmup")
    assert set(STAGES) == {"align", "pretrain", "finetune", "lora", "full"}
