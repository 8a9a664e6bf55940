"""LoRA in weight space: merging an adapter equals peft's own merge; several adapters combine
exactly (sum of the products, no cross terms); unsupported adapters are refused clearly."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.llm.merging import MergePlanError, MergeRecipe, Model, lora, run_merge
from tests.llm.merge_helpers import read_output

TINY = LlamaConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False,
)  # fmt: skip


def base_model(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY)
    model.save_pretrained(tmp_path / "base")
    return model


def adapter(tmp_path, base, name, seed, **options):
    torch.manual_seed(seed)
    settings = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        **options,
    }
    peft_model = get_peft_model(base, LoraConfig(**settings), adapter_name="default")
    for parameter_name, parameter in peft_model.named_parameters():
        if "lora_" in parameter_name:  # B starts at zero; make the update count
            torch.nn.init.normal_(parameter, std=0.2)
    peft_model.save_pretrained(tmp_path / name)
    return peft_model


def test_merging_an_adapter_equals_peft_merge_and_unload(tmp_path):
    base = base_model(tmp_path)
    peft_model = adapter(tmp_path, base, "adapter", seed=1, use_rslora=True)
    expected = peft_model.merge_and_unload().state_dict()
    base_ckpt = Model(tmp_path / "base", "base")
    out = read_output(
        run_merge(MergeRecipe(base_ckpt + lora(tmp_path / "adapter")), tmp_path / "out").output
    )
    for name, tensor in expected.items():
        torch.testing.assert_close(out[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    original = LlamaForCausalLM.from_pretrained(
        tmp_path / "base"
    ).state_dict()  # peft merged in place
    name = "model.layers.0.self_attn.q_proj.weight"
    assert (out[name] - original[name]).abs().max() > 1e-3


def test_adapters_combine_in_weight_space_without_cross_terms(tmp_path):
    base_model(tmp_path)
    first = adapter(tmp_path, LlamaForCausalLM.from_pretrained(tmp_path / "base"), "a1", seed=1)
    second = adapter(
        tmp_path, LlamaForCausalLM.from_pretrained(tmp_path / "base"), "a2", seed=2, lora_alpha=4
    )
    base = Model(tmp_path / "base", "base")
    out = read_output(
        run_merge(
            MergeRecipe(base + 0.5 * lora(tmp_path / "a1") + 0.5 * lora(tmp_path / "a2")),
            tmp_path / "out",
        ).output
    )
    name = "model.layers.1.mlp.down_proj.weight"
    module = "base_model.model.model.layers.1.mlp.down_proj"
    factors = []
    for peft_model, scale in ((first, 8 / 4), (second, 4 / 4)):
        weights = dict(peft_model.named_parameters())
        factors.append(
            (
                weights[f"{module}.lora_A.default.weight"].detach(),
                weights[f"{module}.lora_B.default.weight"].detach(),
                scale,
            )
        )
    w0 = LlamaForCausalLM.from_pretrained(tmp_path / "base").state_dict()[name]
    exact = w0 + sum(0.5 * scale * (b @ a) for a, b, scale in factors)
    torch.testing.assert_close(out[name], exact, rtol=1e-6, atol=1e-6)
    (a1, b1, s1), (a2, b2, s2) = factors
    averaged_factors = w0 + ((s1 * b1 + s2 * b2) / 2) @ ((a1 + a2) / 2)
    assert (out[name] - averaged_factors).abs().max() > 1e-3, "averaging A and B adds cross terms"


def test_unsupported_adapters_and_mismatched_bases_are_refused(tmp_path):
    base = base_model(tmp_path)
    adapter(tmp_path, base, "adapter", seed=1)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA cannot be merged"):
        lora(tmp_path / "dora")
    with pytest.raises(CheckpointError, match="not a peft adapter directory"):
        lora(tmp_path / "base")
    other = LlamaForCausalLM(
        LlamaConfig(**{**TINY.to_dict(), "hidden_size": 64, "intermediate_size": 64})
    )
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(MergePlanError, match="gives an update of shape"):
        run_merge(
            MergeRecipe(Model(tmp_path / "other", "other") + lora(tmp_path / "adapter")),
            tmp_path / "out",
        )
