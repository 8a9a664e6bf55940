"""SPHINX's weight mixing in miniature: does mixing the LLM weights of two domain-specific
fine-tunes beat both parents on the union of the domains?

From one common `demo` checkpoint (trained on the synthetic VQA and REC tasks), the LLM alone is
fine-tuned on two synthetic domains that differ in visual style: `clean` (the scenes as
generated) and `noisy` (the same kind of scenes under heavy pixel noise and blur, new images).
The two LLMs are mixed, theta = beta * theta_clean + (1 - beta) * theta_noisy, for beta in
{0, 0.25, 0.5, 0.75, 1} (sphinx-pipeline merge), and every mix is scored on held-out data of
both domains. Prints the table, writes `weight_mix.png` and `weight_mix.json` to --out.
Checkpoints stay in --out: a later run reuses the common one, and the two fine-tunes unless the
common checkpoint they were tuned from has changed since.

    .venv/bin/python benchmarks/weight_mix.py --out runs/weight_mix [--base-steps 600]
    .venv/bin/python benchmarks/weight_mix.py --base runs/demo/model   # the demo's model as base

Baseline named in the output: the better parent (beta 0 or 1) on the union.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from sphinx_mllm.data.cli import synth
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.evaluation import evaluate
from sphinx_mllm.pipeline.mixing import mix_llm_weights
from sphinx_mllm.pipeline.model import SphinxModel
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from sphinx_mllm.pipeline.training.trainer import TrainConfig, Trainer

TASKS = ("vqa", "rec")
BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def make_domain(root: Path, seed: int, train: int, val: int, noisy: bool) -> Path:
    """A synthetic dataset; `noisy` restyles every image (noise sigma 40, blur radius 1)."""
    if not (root / "tasks" / "manifest.json").is_file():
        synth(root, seed=seed, train=train, val=val, report=False, multi_round=True)
        if noisy:
            rng = np.random.default_rng(seed)
            for path in sorted((root / "images").rglob("*.png")):
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
                pixels += rng.normal(0.0, 40.0, pixels.shape)
                styled = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                styled.filter(ImageFilter.GaussianBlur(1)).save(path)
    return root


def sources(root: Path, split: str) -> list[DataSource]:
    return [DataSource(root / "tasks" / split / f"{task}.jsonl", 1.0, root) for task in TASKS]


def train(model, data_root: Path, run: Path, config: TrainConfig) -> float:
    data = TrainingData.build(
        model.processor, sources(data_root, "train"), max_length=config.max_length
    )
    started = time.perf_counter()
    Trainer(model, data, config, run, progress=True).train()
    return time.perf_counter() - started


def score(model, roots: dict[str, Path], limit: int) -> dict[str, dict[str, float]]:
    model.eval()
    scores = {}
    for domain, root in roots.items():
        tasks = evaluate(model, sources(root, "val"), limit=limit).by_task()
        scores[domain] = {task: row["score"] for task, row in tasks.items()}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/weight_mix"))
    parser.add_argument(
        "--base", type=Path, help="a trained demo checkpoint to start from (default: train one)"
    )
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--domain-steps", type=int, default=300)
    parser.add_argument("--train", type=int, default=600, help="scenes per domain (train)")
    parser.add_argument("--val", type=int, default=40, help="scenes per domain (held out)")
    parser.add_argument("--limit", type=int, default=100, help="held-out records per task")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    roots = {
        "clean": make_domain(out / "clean", 11, args.train, args.val, noisy=False),
        "noisy": make_domain(out / "noisy", 12, args.train, args.val, noisy=True),
    }
    common = args.base or out / "common" / "model"
    if args.base is not None and not (args.base / "config.yaml").is_file():
        parser.error(f"--base {args.base}: not a model checkpoint (no config.yaml)")
    if not common.is_dir():
        torch.manual_seed(0)
        model = build_model("demo")
        base = TrainConfig(
            stage="full", max_steps=args.base_steps, global_batch_size=32, lr=1.5e-3,
            min_lr=1e-4, warmup_steps=30, clip_grad_norm=1.0, max_length=512,
        )  # fmt: skip
        seconds = train(model, roots["clean"], out / "common", base)
        model.save_pretrained(common)
        print(f"common checkpoint: {args.base_steps} steps in {seconds:.0f} s")
    parents = {}
    for domain, root in roots.items():
        target = out / f"finetuned_{domain}" / "model"
        stamp = out / f"finetuned_{domain}" / "base.json"  # which common checkpoint it tuned
        base = {"base": str(Path(common).resolve()), "weights": _weights_stamp(common)}
        if not target.is_dir() or not stamp.is_file() or json.loads(stamp.read_text()) != base:
            if target.parent.is_dir():
                shutil.rmtree(target.parent)  # a parent of another common checkpoint
            model = SphinxModel.from_pretrained(common)
            tune = TrainConfig(
                stage="llm-only", trainable=["llm.*"], max_steps=args.domain_steps,
                global_batch_size=32, lr=1e-3, min_lr=1e-4, warmup_steps=10,
                clip_grad_norm=1.0, max_length=512,
            )  # fmt: skip
            train(model, root, out / f"finetuned_{domain}", tune)
            model.save_pretrained(target)
            stamp.write_text(json.dumps(base))
        parents[domain] = target
    rows = []
    for beta in BETAS:
        mixed = out / f"mix_{beta:.2f}"
        if mixed.exists():
            shutil.rmtree(mixed)
        mix_llm_weights(parents["clean"], parents["noisy"], mixed, beta=beta)
        scores = score(SphinxModel.from_pretrained(mixed), roots, args.limit)
        union = {task: (scores["clean"][task] + scores["noisy"][task]) / 2 for task in TASKS}
        rows.append({"beta": beta, "scores": scores, "union": union})
        print(f"beta {beta:.2f}: {json.dumps(scores)}", flush=True)
    report(rows, out, args.limit)


def _weights_stamp(checkpoint: Path) -> list[float]:
    """Size and modification time of a checkpoint's weight files: a retrained common checkpoint
    makes the cached fine-tunes stale."""
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    return [value for f in files for value in (f.stat().st_size, f.stat().st_mtime)]


def report(rows: list[dict], out: Path, limit: int) -> None:
    header = (
        f"{'beta':>5} "
        + " ".join(f"{d}/{t:<4}" for d in ("clean", "noisy") for t in TASKS)
        + "  union/vqa union/rec  union mean"
    )
    print(header)
    for row in rows:
        cells = [row["scores"][d][t] for d in ("clean", "noisy") for t in TASKS]
        mean = sum(row["union"].values()) / len(TASKS)
        row["union_mean"] = mean
        print(
            f"{row['beta']:>5.2f} "
            + " ".join(f"{value:>10.3f}" for value in cells)
            + f"  {row['union']['vqa']:>9.3f} {row['union']['rec']:>9.3f}  {mean:>10.3f}"
        )
    parents = [row for row in rows if row["beta"] in (0.0, 1.0)]
    best_parent = max(parents, key=lambda row: row["union_mean"])
    best_mix = max(rows, key=lambda row: row["union_mean"])
    ratio = best_mix["union_mean"] / max(best_parent["union_mean"], 1e-9)
    # one held-out record moves the union mean by 1 / (tasks * domains * limit): a smaller
    # margin is a tie, not a win
    record = 1 / (len(TASKS) * 2 * limit)
    margin = best_mix["union_mean"] - best_parent["union_mean"]
    if best_mix["beta"] in (0.0, 1.0):  # otherwise margin >= 0: the mixes include the parents
        verdict = "the mix does not beat both parents on the union"
    elif margin < record:
        verdict = f"a tie: the margin, {margin:.5f}, is under one held-out record ({record:.4f})"
    else:
        verdict = "the mix beats both parents on the union"
    print(
        f"best mix beta {best_mix['beta']:.2f} union {best_mix['union_mean']:.3f} vs the better "
        f"parent (baseline, beta {best_parent['beta']:.2f}) {best_parent['union_mean']:.3f}: "
        f"ratio {ratio:.3f}; {verdict}"
    )
    (out / "weight_mix.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    betas = [row["beta"] for row in rows]
    for domain in ("clean", "noisy"):
        for task, style in zip(TASKS, ("-", "--"), strict=True):
            values = [row["scores"][domain][task] for row in rows]
            axis.plot(betas, values, style, marker="o", label=f"{domain} {task}")
    axis.plot(betas, [row["union_mean"] for row in rows], "k-", linewidth=2, label="union mean")
    axis.set_xlabel("beta (weight of the clean-domain LLM)")
    axis.set_ylabel("held-out score")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "weight_mix.png", dpi=100)


if __name__ == "__main__":
    main()
