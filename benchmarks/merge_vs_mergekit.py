"""sphinx-merge against mergekit on TinyLlama-sized checkpoints: wall time and peak memory.

Creates (once, with a fixed seed) a base and two fine-tuned Llama-shaped checkpoints of about
1.1B parameters in bf16 (TinyLlama's shape; 2.2 GB each, in 1 GB shards), then for linear,
slerp, task_arithmetic and ties runs the same mergekit YAML through `sphinx-merge` and through
`mergekit-yaml` (from an isolated environment, when one is found: tests/llm/oracle/
setup_mergekit_env.sh makes it), each in its own process, and prints wall time, peak resident
memory, their ratios, whether the outputs are equal, and the I/O floor: reading the inputs and
writing one output with plain file copies. Inputs are read once beforehand, so every run reads
from the page cache.

    .venv/bin/python benchmarks/merge_vs_mergekit.py [--work /tmp/merge-bench] [--threads 2]
        [--methods linear slerp ...] [--repeats N]  (N runs of each side, the fastest kept)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPE = {
    "vocab": 32000,
    "hidden": 2048,
    "intermediate": 5632,
    "layers": 22,
    "heads": 32,
    "kv_heads": 4,
}
SHARD_BYTES = 1 << 30
PAIR = "  - model: {ft_a}\n    parameters: {{{a}}}\n  - model: {ft_b}\n    parameters: {{{b}}}\n"
METHODS = {
    "linear": "merge_method: linear\nmodels:\n"
    + PAIR.replace("{a}", "weight: 0.5").replace("{b}", "weight: 0.5"),
    "slerp": "merge_method: slerp\nbase_model: {ft_a}\nmodels:\n"
    "  - model: {ft_a}\n  - model: {ft_b}\nparameters: {{t: 0.5}}\n",
    "task_arithmetic": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
    + PAIR.replace("{a}", "weight: 0.5").replace("{b}", "weight: 0.5"),
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n"
    + PAIR.replace("{a}", "weight: 0.5, density: 0.5").replace("{b}", "weight: 0.5, density: 0.5"),
}


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    h, i, v = SHAPE["hidden"], SHAPE["intermediate"], SHAPE["vocab"]
    kv = h // SHAPE["heads"] * SHAPE["kv_heads"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for layer in range(SHAPE["layers"]):
        prefix = f"model.layers.{layer}."
        shapes |= {
            prefix + "input_layernorm.weight": (h,),
            prefix + "self_attn.q_proj.weight": (h, h),
            prefix + "self_attn.k_proj.weight": (kv, h),
            prefix + "self_attn.v_proj.weight": (kv, h),
            prefix + "self_attn.o_proj.weight": (h, h),
            prefix + "post_attention_layernorm.weight": (h,),
            prefix + "mlp.gate_proj.weight": (i, h),
            prefix + "mlp.up_proj.weight": (i, h),
            prefix + "mlp.down_proj.weight": (h, i),
        }
    return shapes | {"model.norm.weight": (h,), "lm_head.weight": (v, h)}


def write_checkpoint(directory: Path, seed: int, base_seed: int | None) -> None:
    """A bf16 checkpoint: random weights, or (with base_seed) the base plus a small seeded delta."""
    directory.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for name, shape in tensor_shapes().items():
        generator = torch.Generator().manual_seed(
            zlib.crc32(f"{base_seed if base_seed is not None else seed}/{name}".encode())
        )
        tensor = torch.randn(shape, generator=generator) * 0.02
        if base_seed is not None:
            delta = torch.Generator().manual_seed(zlib.crc32(f"delta {seed}/{name}".encode()))
            tensor += torch.randn(shape, generator=delta) * 0.002
        tensor = tensor.to(torch.bfloat16)
        if current and size + tensor.numel() * 2 > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += tensor.numel() * 2
    shards.append(current)
    weight_map = {}
    for index, shard in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, file)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": SHAPE["hidden"],
        "intermediate_size": SHAPE["intermediate"], "num_hidden_layers": SHAPE["layers"],
        "num_attention_heads": SHAPE["heads"], "num_key_value_heads": SHAPE["kv_heads"],
        "vocab_size": SHAPE["vocab"], "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def make_models(work: Path) -> dict[str, Path]:
    paths = {name: work / "models" / name for name in ("base", "ft_a", "ft_b")}
    stamp = work / "models" / "complete"
    if not stamp.exists():
        started = time.perf_counter()
        for seed, (name, path) in enumerate(paths.items()):
            write_checkpoint(path, seed, None if name == "base" else 0)
        stamp.write_text("ok")
        print(f"created 3 checkpoints in {time.perf_counter() - started:.0f} s")
    return paths


def run(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds and peak resident MiB of one command. Dirty pages of earlier runs are flushed
    first, so no run pays for another's writes. The peak comes from /usr/bin/time, whose own
    child starts small: a child forked straight from this process would inherit this process's
    peak in its accounting (Linux keeps the high-water mark across fork and exec)."""
    os.sync()
    timer = ["/usr/bin/time", "-f", "%M"] if Path("/usr/bin/time").is_file() else []
    started = time.perf_counter()
    result = subprocess.run([*timer, *command], cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.decode()[-2000:]}")
    peak = int(result.stderr.decode().strip().splitlines()[-1]) / 1024 if timer else float("nan")
    return elapsed, peak, result.stdout.decode()


def best_of(repeats: int, command: list[str], cwd: Path, output: Path) -> tuple[float, float, str]:
    """The fastest of `repeats` runs of `command` (each writing `output` afresh): its seconds,
    peak MiB and printout."""
    runs = []
    for _ in range(max(1, repeats)):
        shutil.rmtree(output, ignore_errors=True)
        runs.append(run(command, cwd))
    return min(runs, key=lambda result: result[0])


def read_all(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        for file in sorted(path.glob("*.safetensors")):
            with file.open("rb") as handle:
                while handle.read(1 << 24):
                    pass
    return time.perf_counter() - started


def write_copy(source: Path, target: Path) -> float:
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    shutil.copytree(source, target)
    return time.perf_counter() - started


COMPARE = """
import json, sys, torch
from pathlib import Path
from safetensors import safe_open
ours, theirs = Path(sys.argv[1]), Path(sys.argv[2])
index = json.loads((ours / "model.safetensors.index.json").read_text())["weight_map"]
differ = 0
for file in sorted(theirs.glob("*.safetensors")):
    with safe_open(str(file), framework="pt") as handle:
        for name in handle.keys():
            with safe_open(str(ours / index[name]), framework="pt") as mine:
                differ += not torch.equal(mine.get_tensor(name), handle.get_tensor(name))
print("equal" if differ == 0 else f"{differ} tensors differ")
"""


def outputs_equal(ours: Path, theirs: Path) -> str:
    """Compared in a child process, so this one stays small (see `run`)."""
    result = subprocess.run(
        [sys.executable, "-c", COMPARE, str(ours), str(theirs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def find_mergekit(explicit: str | None) -> Path | None:
    candidates = [explicit, os.environ.get("MERGEKIT_YAML"), "/work/mergekit-env/bin/mergekit-yaml"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/merge-bench"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--mergekit", help="path of mergekit-yaml (default: the oracle environment)"
    )
    parser.add_argument("--methods", nargs="*", default=[*METHODS, "ties --ranking select"])
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each side; the fastest is kept"
    )
    args = parser.parse_args()
    work = args.work
    paths = make_models(work)
    mergekit = find_mergekit(args.mergekit)
    sphinx_merge = Path(sys.executable).parent / "sphinx-merge"
    read_s = read_all(list(paths.values()))  # warm the page cache
    read_s = read_all([paths["ft_a"], paths["ft_b"]])
    write_s = write_copy(paths["ft_a"], work / "copy")
    floor = read_s + write_s
    print(f"torch {torch.__version__}, {args.threads} threads; mergekit: {mergekit or 'not found'}")
    print(
        f"I/O floor: read 2 inputs {read_s:.1f} s + write one copy {write_s:.1f} s = {floor:.1f} s"
    )
    header = (
        f"{'method':<22} {'ours s':>7} {'merge s':>7} {'ours MiB':>9} {'mk s':>7} {'mk MiB':>8} "
        f"{'speed-up':>8} {'memory':>7}  output"
    )
    print(header)
    for label in args.methods:
        method, *options = label.split()
        config = work / f"{method}.yml"
        config.write_text(
            METHODS[method].format(**{name: str(path) for name, path in paths.items()})
        )
        ours_out, theirs_out = work / f"ours_{method}", work / f"mergekit_{method}"
        shutil.rmtree(ours_out, ignore_errors=True)
        ours = [str(sphinx_merge), str(config), str(ours_out), "--no-progress"]
        ours_s, ours_mib, printed = best_of(
            args.repeats, [*ours, "--threads", str(args.threads), *options], work, ours_out
        )
        inside = re.search(r"in ([0-9.]+) s", printed)  # the merge itself, without Python's start
        merge_s = float(inside.group(1)) if inside else float("nan")
        row = f"{label:<22} {ours_s:>7.1f} {merge_s:>7.1f} {ours_mib:>9.0f}"
        if mergekit is not None:
            shutil.rmtree(theirs_out, ignore_errors=True)
            command = [
                str(mergekit),
                str(config),
                str(theirs_out),
                "--no-copy-tokenizer",
                "--no-write-model-card",
            ]
            theirs_s, theirs_mib, _ = best_of(args.repeats, command, work, theirs_out)
            row += f" {theirs_s:>7.1f} {theirs_mib:>8.0f} {theirs_s / ours_s:>7.1f}x "
            row += f"{ours_mib / theirs_mib:>7.2f}  "
            row += outputs_equal(ours_out, theirs_out)
            shutil.rmtree(theirs_out, ignore_errors=True)
        if method == "linear":
            row += (
                f"  (linear / I/O floor: {ours_s / floor:.2f}; merge only: {merge_s / floor:.2f})"
            )
        print(row, flush=True)
        shutil.rmtree(ours_out, ignore_errors=True)


if __name__ == "__main__":
    main()
