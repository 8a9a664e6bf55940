"""Importing a LLaMA2-Accessory release: conversion time and peak memory against the checkpoint's
size, on a synthetic SPHINX-Tiny release with the real key set and shapes (one bfloat16 shard of
about 6.2 GB: TinyLlama-1.1B, the ConvNeXt-XXL trunk, DINOv2-g/14 in the hub's names,
`visual_proj`, `start_img`/`end_img`; random values).

`sphinx-pipeline import-accessory` runs in a fresh process; its peak resident set (VmHWM,
which counts the memory-mapped shard pages it has touched) is compared with the shard's size
(target: at most a third) and with the named baseline, measured in the same run: a fresh
process that loads the shard as Accessory's own loader does (`torch.load` without mmap, every
tensor in memory) and nothing else.

    .venv/bin/python benchmarks/accessory_import.py [--workdir DIR] [--keep]

The release (6.2 GB) and the output (6.2 GB) are written under --workdir (default: a temporary
directory, removed at the end unless --keep); a release already there is reused.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TINYLLAMA = {
    "dim": 2048,
    "n_layers": 22,
    "n_heads": 32,
    "n_kv_heads": 4,
    "vocab_size": 32000,
    "multiple_of": 256,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "max_batch_size": 32,
    "max_seq_len": 4096,
    "rope_scaling": None,
    "load_pretrained_visual_encoder": False,
}
SHARD = "consolidated.00-of-01.model.pth"
# VmHWM: the peak resident set of this process image (ru_maxrss would carry the parent's peak
# over fork and exec)
CHILD_PEAK = (
    "print('PEAK_KB', next(l.split()[1] for l in open('/proc/self/status') "
    "if l.startswith('VmHWM')))"
)


def release_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of a SPHINX-Tiny shard (`llama_ens_light`), by name, with its shape."""
    import timm

    dim, hidden, kv = 2048, 5632, 4 * 64
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (32000, dim)}
    for layer in range(22):
        prefix = f"layers.{layer}."
        shapes.update(
            {
                prefix + "attention.wq.weight": (dim, dim),
                prefix + "attention.wk.weight": (kv, dim),
                prefix + "attention.wv.weight": (kv, dim),
                prefix + "attention.wo.weight": (dim, dim),
                prefix + "feed_forward.w1.weight": (hidden, dim),
                prefix + "feed_forward.w2.weight": (dim, hidden),
                prefix + "feed_forward.w3.weight": (hidden, dim),
                prefix + "attention_norm.weight": (dim,),
                prefix + "ffn_norm.weight": (dim,),
            }
        )
    shapes.update({"norm.weight": (dim,), "output.weight": (32000, dim)})
    convnext = timm.create_model("convnext_xxlarge", pretrained=False, num_classes=0)
    for name, tensor in convnext.state_dict().items():
        shapes[f"openclip_convnext_xxl.{name}"] = tuple(tensor.shape)
    with torch.device("meta"):
        dinov2 = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, num_classes=0)
    for name, tensor in dinov2.state_dict().items():
        hub_name = name.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        shapes[f"dinov2_vitg14.{hub_name}"] = tuple(tensor.shape)
    shapes["dinov2_vitg14.mask_token"] = (1, 1536)
    shapes.update(
        {
            "visual_proj.0.weight": (dim, 3072 + 1536),
            "visual_proj.0.bias": (dim,),
            "visual_proj.1.weight": (dim,),
            "visual_proj.1.bias": (dim,),
            "start_img": (1, 1, dim),
            "end_img": (1, 1, dim),
        }
    )
    return shapes


def write_release(directory: Path) -> int:
    """The synthetic release; returns the shard's size in bytes."""
    shard = directory / SHARD
    if shard.is_file() and (directory / "meta.json").is_file():
        return shard.stat().st_size
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in release_shapes().items():
        tensor = torch.empty(shape, dtype=torch.bfloat16)
        tensor.normal_(0.0, 0.02, generator=generator)
        state[f"llma.{name}"] = tensor
    print(f"writing {sum(t.nbytes for t in state.values()) / 1e9:.2f} GB to {shard}", flush=True)
    torch.save({"model": state}, shard)
    del state
    (directory / "config.json").write_text(json.dumps(TINYLLAMA, indent=2))
    (directory / "meta.json").write_text(json.dumps({"llama_type": "llama_ens_light"}))
    source = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    with importlib.resources.as_file(source) as path:
        shutil.copyfile(path, directory / "tokenizer.model")
    return shard.stat().st_size


def run_child(code: str) -> tuple[float, int]:
    """Seconds and peak resident kilobytes of a fresh Python process running `code`."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{CHILD_PEAK}"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"the child failed:\n{result.stderr[-3000:]}")
    peak = [line for line in result.stdout.splitlines() if line.startswith("PEAK_KB")]
    return seconds, int(peak[-1].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the release and the output")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="accessory-bench-"))
    release, output = workdir / "SPHINX-Tiny-synthetic", workdir / "sphinx-tiny"
    try:
        size = write_release(release)
        shutil.rmtree(output, ignore_errors=True)
        convert = (
            "from sphinx_mllm.pipeline.accessory import import_accessory\n"
            f"import_accessory({str(release)!r}, {str(output)!r})"
        )
        seconds, peak_kb = run_child(convert)
        written = sum(f.stat().st_size for f in output.glob("*.safetensors"))
        baseline = (
            "import torch\n"
            f"state = torch.load({str(release / SHARD)!r}, map_location='cpu', "
            "weights_only=True)['model']\n"
            "total = sum(t.nbytes for t in state.values())"
        )
        base_seconds, base_kb = run_child(baseline)
        gib = 1024**3
        print(f"checkpoint: {size / gib:.2f} GiB in one shard; output {written / gib:.2f} GiB")
        print(
            f"import-accessory: {seconds:.1f} s ({size / gib / seconds:.2f} GiB/s), "
            f"peak RSS {peak_kb / 1024**2:.2f} GiB = {peak_kb * 1024 / size:.3f} x the checkpoint "
            f"(target <= 0.333)"
        )
        print(
            f"baseline (torch.load without mmap, Accessory's loader): {base_seconds:.1f} s, "
            f"peak RSS {base_kb / 1024**2:.2f} GiB = {base_kb * 1024 / size:.3f} x the checkpoint"
        )
        print(f"peak RSS ratio import-accessory / baseline: {peak_kb / base_kb:.3f}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir if args.workdir is None else output, ignore_errors=True)


if __name__ == "__main__":
    main()
