"""Regenerate the mergekit golden fixtures under tests/llm/fixtures/mergekit/.

Run this ONLY inside the isolated mergekit environment (see setup_mergekit_env.sh); mergekit is
a test oracle, never a dependency of our packages, and CI never runs this script:

    tests/llm/oracle/setup_mergekit_env.sh /work/mergekit-env
    HF_HUB_OFFLINE=1 /work/mergekit-env/bin/python tests/llm/oracle/make_fixtures.py

What it does (deterministic, fixed seeds):

1. Builds tiny Llama checkpoints with transformers' LlamaForCausalLM (hidden 32, 4 heads,
   intermediate 64, vocab 128, untied lm_head), saved in bfloat16 as model.safetensors +
   config.json under fixtures/mergekit/models/:
     base, ft_a, ft_b      2 layers; ft_* = base + seeded perturbations (a shared direction plus
                           an independent one, so task vectors correlate but disagree in sign often)
     base_4l, ft_4l        the same shapes with 4 layers, for gradients evaluated off the endpoints
2. For every case in CASES writes <case>/config.yml (model paths relative to fixtures/mergekit/)
   and runs `mergekit-yaml <case>/config.yml OUT` with fixtures/mergekit/ as the working
   directory, keeping OUT/model.safetensors and OUT/config.json (the output model config).
3. Writes manifest.json: mergekit version, CLI options, output dtype and sha256 of each file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

MERGEKIT_VERSION = "0.1.5"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mergekit"
SEED = 20240601
RANDOM_SEED = 42  # --random-seed for the DARE cases with density < 1
# No tokenizer in the fixtures; and the model card probes the Hub for a relative "dir/name" path,
# which fails offline, so it is switched off.
COMMON_OPTIONS = ["--no-copy-tokenizer", "--no-write-model-card"]

BASE, FT_A, FT_B = "models/base", "models/ft_a", "models/ft_b"
BASE_4L, FT_4L = "models/base_4l", "models/ft_4l"


def _m(path: str, **parameters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": path}
    if parameters:
        entry["parameters"] = parameters
    return entry


def _ta(method: str, extra: dict[str, Any] | None = None, **models: Any) -> dict[str, Any]:
    """A base-model (task-vector) config over ft_a and ft_b with per-model parameters."""
    return {
        "merge_method": method,
        "base_model": BASE,
        "models": [_m(FT_A, **models["a"]), _m(FT_B, **models["b"])],
        **({"parameters": extra} if extra else {}),
    }


W = {"a": {"weight": 0.6}, "b": {"weight": 0.4}}
W_D5 = {"a": {"weight": 0.6, "density": 0.5}, "b": {"weight": 0.4, "density": 0.5}}
W_D1 = {"a": {"weight": 0.6, "density": 1.0}, "b": {"weight": 0.4, "density": 1.0}}
W_BC = {
    "a": {"weight": 0.6, "density": 0.8, "gamma": 0.05},
    "b": {"weight": 0.4, "density": 0.8, "gamma": 0.05},
}

# case name -> (config, extra mergekit-yaml options, note)
CASES: dict[str, tuple[dict[str, Any], list[str], str]] = {
    "linear": (
        {
            "merge_method": "linear",
            "models": [_m(FT_A, weight=0.3), _m(FT_B, weight=0.7)],
            "parameters": {"normalize": True},
        },
        [],
        "weighted mean, computed in float32, stored in the input dtype (bf16)",
    ),
    "linear_unnormalized": (
        {
            "merge_method": "linear",
            "models": [_m(FT_A, weight=0.5), _m(FT_B, weight=0.25)],
            "parameters": {"normalize": False},
        },
        [],
        "weighted sum, no division by the weight sum",
    ),
    "linear_gradient": (
        {
            "merge_method": "linear",
            "models": [_m(FT_A, weight=[0.2, 0.5, 0.9]), _m(FT_B, weight=0.5)],
        },
        [],
        "gradient weight; 2 layers so layer 0 gets t=0, layer 1 t=1; embed/norm/lm_head t=0",
    ),
    "linear_gradient_4l": (
        {
            "merge_method": "linear",
            "models": [_m(BASE_4L, weight=0.5), _m(FT_4L, weight=[0.0, 0.3, 1.0])],
        },
        [],
        "gradient over 4 layers: t = 0, 1/3, 2/3, 1 -> 0.0, 0.2, 0.5333.., 1.0",
    ),
    "linear_filter": (
        {
            "merge_method": "linear",
            "models": [
                _m(
                    FT_A,
                    weight=[
                        {"filter": "self_attn", "value": 0.1},
                        {"filter": "mlp", "value": 0.9},
                        {"value": 0.5},
                    ],
                ),
                _m(FT_B),
            ],
            "parameters": {
                "weight": [{"filter": "embed_tokens", "value": 2.0}, {"value": 0.5}],
            },
        },
        [],
        "per-model filtered weight for ft_a; ft_b falls back to the global filtered weight",
    ),
    "linear_dtype_float32": (
        {
            "merge_method": "linear",
            "models": [_m(FT_A, weight=0.3), _m(FT_B, weight=0.7)],
            "dtype": "float32",
        },
        [],
        "dtype: float32 -> inputs upcast on load, output saved as float32",
    ),
    "task_arithmetic": (_ta("task_arithmetic", **W), [], "base + sum w_i * delta_i"),
    "task_arithmetic_lambda": (
        _ta("task_arithmetic", {"lambda": 0.7}, **W),
        [],
        "base + 0.7 * sum w_i * delta_i",
    ),
    "task_arithmetic_normalized": (
        _ta(
            "task_arithmetic",
            {"normalize": True, "lambda": 0.5},
            a={"weight": 0.6},
            b={"weight": 0.2},
        ),
        [],
        "base + 0.5 * (sum w_i delta_i) / (sum w_i)",
    ),
    "ties": (_ta("ties", **W_D5), [], "TIES, density 0.5, normalize default (true)"),
    "ties_unnormalized": (
        _ta(
            "ties",
            {"normalize": False, "lambda": 0.8},
            a={"weight": 1.0, "density": 0.3},
            b={"weight": 0.5, "density": 0.7},
        ),
        [],
        "TIES with per-model densities, normalize false, lambda 0.8",
    ),
    "ties_dtype_float32": (
        {**_ta("ties", **W_D5), "dtype": "float32"},
        [],
        "TIES computed in float32 (dtype), output float32",
    ),
    "ties_out_dtype_bf16": (
        {**_ta("ties", **W_D5), "dtype": "float32", "out_dtype": "bfloat16"},
        [],
        "TIES computed in float32 (dtype), written as bfloat16 (out_dtype)",
    ),
    "dare_linear": (
        _ta("dare_linear", **W_D1),
        [],
        "density 1.0: no dropout, equals task_arithmetic",
    ),
    "dare_ties": (
        _ta("dare_ties", **W_D1),
        [],
        "density 1.0: no dropout; TIES sign election, normalize default false",
    ),
    "dare_linear_seeded": (
        _ta("dare_linear", **W_D5),
        ["--random-seed", str(RANDOM_SEED)],
        "RANDOM: torch.bernoulli masks after torch.manual_seed(42); see MERGEKIT_SEMANTICS.md",
    ),
    "dare_ties_seeded": (
        _ta("dare_ties", **W_D5),
        ["--random-seed", str(RANDOM_SEED)],
        "RANDOM: torch.bernoulli masks after torch.manual_seed(42); see MERGEKIT_SEMANTICS.md",
    ),
    "breadcrumbs": (_ta("breadcrumbs", **W_BC), [], "density 0.8, gamma 0.05"),
    "breadcrumbs_ties": (_ta("breadcrumbs_ties", **W_BC), [], "density 0.8, gamma 0.05"),
    "slerp": (
        {
            "merge_method": "slerp",
            "base_model": BASE,
            "models": [_m(BASE), _m(FT_A)],
            "parameters": {"t": 0.3},
        },
        [],
        "t=0 is base_model (models/base), t=1 is ft_a",
    ),
    "slerp_gradient": (
        {
            "merge_method": "slerp",
            "base_model": FT_A,
            "models": [_m(FT_A), _m(FT_B)],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0.0, 0.5, 0.3]},
                    {"filter": "mlp", "value": [1.0, 0.5, 0.7]},
                    {"value": 0.5},
                ]
            },
        },
        [],
        "filtered gradient t (2 layers: endpoints only); base_model ft_a is t=0",
    ),
    "slerp_gradient_4l": (
        {
            "merge_method": "slerp",
            "base_model": BASE_4L,
            "models": [_m(BASE_4L), _m(FT_4L)],
            "parameters": {"t": [0.0, 0.5, 0.3, 0.7, 1.0]},
        },
        [],
        "gradient t over 4 layers (t_layer = 0, 1/3, 2/3, 1); non-layer tensors use t_layer=0",
    ),
    "model_stock": (
        {
            "merge_method": "model_stock",
            "base_model": BASE,
            "models": [_m(FT_A), _m(FT_B)],
        },
        [],
        "whole-tensor cosine (filter_wise false)",
    ),
    "model_stock_filter_wise": (
        {
            "merge_method": "model_stock",
            "base_model": BASE,
            "models": [_m(FT_A), _m(FT_B)],
            "parameters": {"filter_wise": True},
        },
        [],
        "per-row cosine (filter_wise true)",
    ),
    "passthrough": (
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": FT_A, "layer_range": [0, 2]}]},
                {
                    "sources": [
                        {
                            "model": FT_B,
                            "layer_range": [1, 2],
                            "parameters": {
                                "scale": [
                                    {"filter": "o_proj", "value": 0.5},
                                    {"filter": "down_proj", "value": 0.5},
                                ]
                            },
                        }
                    ]
                },
            ],
        },
        [],
        "3-layer stack: ft_a layers 0-1, then ft_b layer 1 with o_proj/down_proj scaled by 0.5; "
        "embed from ft_a (first slice), norm/lm_head from ft_b (last slice)",
    ),
}


def _perturbed(
    base: dict[str, torch.Tensor], seed: int, common_seed: int
) -> dict[str, torch.Tensor]:
    """base + 0.25*scale*(0.6*shared + 0.8*independent), computed in float32, stored as bf16."""
    g_own = torch.Generator().manual_seed(seed)
    g_common = torch.Generator().manual_seed(common_seed)
    out = {}
    for name in sorted(base):
        t = base[name].float()
        scale = t.std().item() if t.dim() > 1 else 0.2
        shared = torch.randn(t.shape, generator=g_common)
        own = torch.randn(t.shape, generator=g_own)
        out[name] = (t + 0.25 * scale * (0.6 * shared + 0.8 * own)).to(torch.bfloat16)
    return out


def _save_model(config: LlamaConfig, state: dict[str, torch.Tensor], path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(path, safe_serialization=True)
    for extra in path.iterdir():  # keep only model.safetensors + config.json
        if extra.name not in ("model.safetensors", "config.json"):
            extra.unlink()
    written = load_file(str(path / "model.safetensors"))
    assert set(written) == set(state), sorted(set(written) ^ set(state))
    assert all(torch.equal(written[k], state[k]) for k in state)


def make_models(models_dir: Path) -> None:
    for suffix, layers, seed in (("", 2, SEED), ("_4l", 4, SEED + 100)):
        config = LlamaConfig(
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=64,
            vocab_size=128,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        g = torch.Generator().manual_seed(seed + 1)
        base = {}
        for name, tensor in model.state_dict().items():
            t = tensor.detach().float()
            if t.dim() == 1:  # RMSNorm weights start at 1.0: make them non-constant
                t = t + 0.1 * torch.randn(t.shape, generator=g)
            base[name] = t.to(torch.bfloat16)
        _save_model(config, base, models_dir / f"base{suffix}")
        if suffix:
            _save_model(config, _perturbed(base, seed + 2, seed + 3), models_dir / f"ft{suffix}")
        else:
            _save_model(config, _perturbed(base, seed + 2, seed + 4), models_dir / "ft_a")
            _save_model(config, _perturbed(base, seed + 3, seed + 4), models_dir / "ft_b")


def _mergekit_cmd() -> list[str]:
    script = Path(sys.executable).parent / "mergekit-yaml"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mergekit.scripts.run_yaml"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_case(name: str, config: dict[str, Any], options: list[str], note: str) -> dict[str, Any]:
    case_dir = FIXTURES / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    header = (
        f"# mergekit {MERGEKIT_VERSION} golden case '{name}': {note}\n"
        f"# Reproduce from tests/llm/fixtures/mergekit/ (model paths are relative to it):\n"
        f"#   HF_HUB_OFFLINE=1 mergekit-yaml {name}/config.yml OUT "
        f"{' '.join([*options, *COMMON_OPTIONS])}\n"
    )
    (case_dir / "config.yml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [
            *_mergekit_cmd(),
            f"{name}/config.yml",
            str(out),
            *COMMON_OPTIONS,
            "--quiet",
            *options,
        ]
        proc = subprocess.run(cmd, cwd=FIXTURES, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: {' '.join(cmd)} failed\n{proc.stdout}\n{proc.stderr}")
        produced = sorted(p.name for p in out.iterdir())
        if "model.safetensors" not in produced:
            raise RuntimeError(f"{name}: expected a single model.safetensors, got {produced}")
        shutil.copy(out / "model.safetensors", case_dir / "model.safetensors")
        shutil.copy(out / "config.json", case_dir / "config.json")
    tensors = load_file(str(case_dir / "model.safetensors"))
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    return {
        "merge_method": config["merge_method"],
        "options": options,
        "note": note,
        "random": bool(options),
        "output_dtypes": dtypes,
        "num_tensors": len(tensors),
        "sha256": {
            f: _sha256(case_dir / f) for f in ("config.yml", "model.safetensors", "config.json")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="regenerate only these cases (models kept)")
    args = parser.parse_args()

    version = importlib.metadata.version("mergekit")
    if version != MERGEKIT_VERSION:
        sys.exit(f"mergekit {MERGEKIT_VERSION} required, found {version}")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    manifest_path = FIXTURES / "manifest.json"
    manifest: dict[str, Any] = {}
    if args.only:
        manifest = json.loads(manifest_path.read_text())
    else:
        make_models(FIXTURES / "models")
        manifest = {
            "mergekit_version": MERGEKIT_VERSION,
            "torch_version": torch.__version__.split("+")[0],
            "models": {
                p.name: _sha256(p / "model.safetensors")
                for p in sorted((FIXTURES / "models").iterdir())
            },
            "cases": {},
        }
    for name, (config, options, note) in CASES.items():
        if args.only and name not in args.only:
            continue
        manifest["cases"][name] = run_case(name, config, options, note)
        print(f"{name}: ok", flush=True)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB in {FIXTURES}")


if __name__ == "__main__":
    main()
