"""The built-in language model presets: each a factory returning a transformers config.

Real-size presets copy the `config.json` of the Hugging Face repository they are named after and
record that repository as the config's `name_or_path`, which `load_llm(..., pretrained=True)`
loads weights from. Tiny presets (width 64, 2 layers, vocabulary 256) keep each family's
distinctive traits (grouped-query attention, Qwen2's qkv bias and tied embeddings, Mistral's
sliding window, Mixtral's experts) and have no pretrained source: they are for tests.
Calling a factory builds nothing but the config, so listing and inspecting stay cheap.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, MistralConfig, MixtralConfig, PreTrainedConfig, Qwen2Config

TINY_SHAPE: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def _rope(theta: float) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta}


def _from_repository(config: PreTrainedConfig, repository: str) -> PreTrainedConfig:
    config.name_or_path = repository
    return config


def _llama2(**shape: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters=_rope(10000.0),
        bos_token_id=1,
        eos_token_id=2,
        **shape,
    )


def llama2_7b() -> LlamaConfig:
    """LLaMA-2-7B (meta-llama/Llama-2-7b-hf): d 4096, 32 layers, 32 heads, FFN 11008; 6.74B."""
    config = _llama2(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008
    )
    return _from_repository(config, "meta-llama/Llama-2-7b-hf")


def llama2_13b() -> LlamaConfig:
    """LLaMA-2-13B (meta-llama/Llama-2-13b-hf), SPHINX's LLM: d 5120, 40 layers, 40 heads; 13.0B."""
    config = _llama2(
        hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, intermediate_size=13824
    )
    return _from_repository(config, "meta-llama/Llama-2-13b-hf")


def tinyllama_1_1b() -> LlamaConfig:
    """TinyLlama-1.1B (SPHINX-Tiny's LLM): d 2048, 22 layers, 32 heads, 4 KV heads; 1.10B."""
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters=_rope(10000.0),
        bos_token_id=1,
        eos_token_id=2,
    )
    return _from_repository(config, "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T")


def mistral_7b() -> MistralConfig:
    """Mistral-7B-v0.1: d 4096, 32 layers, 32 heads, 8 KV heads, sliding window 4096; 7.24B."""
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_parameters=_rope(10000.0),
        sliding_window=4096,
    )
    return _from_repository(config, "mistralai/Mistral-7B-v0.1")


def _qwen2(**shape: Any) -> Qwen2Config:
    return Qwen2Config(
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        rope_parameters=_rope(1000000.0),
        sliding_window=131072,
        max_window_layers=28,
        bos_token_id=151643,
        eos_token_id=151643,
        **shape,
    )


def qwen2_7b() -> Qwen2Config:
    """Qwen2-7B: d 3584, 28 layers, 28 heads, 4 KV heads, vocabulary 152064; 7.62B."""
    config = _qwen2(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
    )
    return _from_repository(config, "Qwen/Qwen2-7B")


def qwen2_1_5b() -> Qwen2Config:
    """Qwen2-1.5B: d 1536, 28 layers, 12 heads, 2 KV heads, tied embeddings; 1.54B."""
    config = _qwen2(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return _from_repository(config, "Qwen/Qwen2-1.5B")


def mixtral_8x7b() -> MixtralConfig:
    """Mixtral-8x7B-v0.1 (SPHINX-MoE's LLM): 8 experts, 2 per token, d 4096, 32 layers; 46.7B."""
    config = MixtralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_parameters=_rope(1000000.0),
        router_aux_loss_coef=0.02,
    )
    return _from_repository(config, "mistralai/Mixtral-8x7B-v0.1")


def tiny_llama() -> LlamaConfig:
    """A random-initialised LLaMA (width 64, 2 layers, grouped-query attention) for tests."""
    return LlamaConfig(**TINY_SHAPE, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def tiny_mistral() -> MistralConfig:
    """A random-initialised Mistral (width 64, 2 layers, sliding window 32) for tests."""
    return MistralConfig(**TINY_SHAPE, rms_norm_eps=1e-5, sliding_window=32)


def tiny_qwen2() -> Qwen2Config:
    """A random-initialised Qwen2 (width 64, 2 layers, qkv bias, tied embeddings) for tests."""
    return Qwen2Config(**TINY_SHAPE, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def tiny_mixtral() -> MixtralConfig:
    """A random-initialised Mixtral (width 64, 2 layers, 4 experts, 2 per token) for tests."""
    return MixtralConfig(**TINY_SHAPE, num_local_experts=4, num_experts_per_tok=2)
