"""One training step of the real `sphinx` preset on a CUDA device: step time, tokens per second
and peak memory.

The model is `build_model("sphinx", device="cuda")`: four encoders and LLaMA-2-13B (~16.4B
parameters) in bf16 with random weights, built on the device. Stage finetune (encoders frozen;
mixer and LLM train, ~13.0B parameters), activation checkpointing when the LLM supports
`gradient_checkpointing_enable`, a batch of 224 px images with ~512 text tokens each (prefix
placement adds 291 visual tokens per sample), the loss over the labelled half of the text
(`return_logits=False`, as training runs it). A step is forward + backward; `--optimizer adamw`
adds a fused AdamW update with bf16 states (~52 GB more for 13B parameters: weights 33 GB +
gradients 26 GB + states 52 GB fit a 141 GB device; fp32 master weights would not).
Reported after warm-up: the median step time, tokens per second (all LLM positions, visual
included) and `torch.cuda.max_memory_allocated` over the timed steps.

    .venv/bin/python benchmarks/gpu_step.py [--batch 1] [--text-tokens 512] [--steps 3]
    .venv/bin/python benchmarks/gpu_step.py --preset demo --device cpu  # checks the script
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.model import SphinxModel
from sphinx_mllm.pipeline.placement import IGNORE_INDEX
from sphinx_mllm.pipeline.stages import apply_stage

GIB = 2**30


@dataclass
class Batch:
    input_ids: torch.Tensor
    views: torch.Tensor  # [B, 1, 3, s, s] in [0, 1]
    attention_mask: torch.Tensor
    labels: torch.Tensor
    llm_tokens: int  # positions the LLM sees, visual tokens included


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sphinx", help="model preset (default: sphinx)")
    parser.add_argument("--device", default="cuda", help="default: cuda (cpu: a script check)")
    parser.add_argument("--batch", type=int, default=1, help="images per step (default: 1)")
    parser.add_argument("--text-tokens", type=int, default=512, help="text tokens per sample")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--stage", default="finetune", help="training stage (default: finetune)")
    parser.add_argument(
        "--optimizer",
        choices=("none", "adamw"),
        default="none",
        help="none: forward + backward (default); adamw: plus a fused AdamW update",
    )
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="keep every activation (more memory)"
    )
    args = parser.parse_args(argv)
    for name in ("batch", "text_tokens", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def require_device(name: str) -> torch.device:
    """The device to run on; exits with a message when it is CUDA and there is none."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "gpu_step.py needs a CUDA device and torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); run it on a GPU "
            "machine, or check the script on the CPU with --preset demo --device cpu"
        )
    return device


def make_batch(model: SphinxModel, batch: int, text: int, device: torch.device) -> Batch:
    """`[BOS] + image-token run + text` per sample (the form the processor gives, whichever the
    placement); the second half of the text is labelled."""
    visual = model.num_visual_tokens()
    vocab = model.llm.get_input_embeddings().num_embeddings
    text_ids = torch.randint(3, vocab, (batch, text - 1))
    text_ids[text_ids == model.image_token_id] = 3
    bos_id = 1 if model.bos_token_id is None else model.bos_token_id
    bos = torch.full((batch, 1), bos_id, dtype=torch.long)
    image = torch.full((batch, visual), model.image_token_id, dtype=torch.long)
    input_ids = torch.cat([bos, image, text_ids], dim=1)
    labels = input_ids.clone()
    labels[:, : input_ids.shape[1] - text // 2] = IGNORE_INDEX
    side = model.visual.splitter.base_size
    return Batch(
        input_ids=input_ids.to(device),
        views=torch.rand(batch, 1, 3, side, side, device=device),
        attention_mask=torch.ones_like(input_ids, device=device),
        labels=labels.to(device),
        llm_tokens=batch * (text + visual),
    )


def enable_checkpointing(model: SphinxModel) -> bool:
    """Checkpoint every decoder layer of the LLM; False when it cannot. Transformers 5 renamed
    `gradient_checkpointing_enable` to `activation_checkpointing_enable` (the old name warns)."""
    llm = model.llm
    if not getattr(llm, "supports_gradient_checkpointing", False):
        return False
    options = {"use_reentrant": False}  # the embeddings need not require grad
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    elif hasattr(llm, "gradient_checkpointing_enable"):
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        return False
    return True


def training_step(
    model: SphinxModel, batch: Batch, optimizer: torch.optim.Optimizer | None
) -> Callable[[], float]:
    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = model(
            batch.input_ids,
            batch.views,
            batch.attention_mask,
            batch.labels,
            return_logits=False,
        ).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        return loss.item()  # also waits for the device

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_gib(device: torch.device, peak: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    reading = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
    return reading(device) / GIB


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e8 else f"{parameters / 1e6:.2f}M"


def _gib(value: float | None) -> str:
    return "n/a (not CUDA)" if value is None else f"{value:.1f} GiB"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = require_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"{args.preset} on {where} (torch {torch.__version__})")
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(args.preset, device=device)
    synchronize(device)
    built_s = time.perf_counter() - start
    trainable = apply_stage(model, args.stage)
    model.train()
    checkpointing = not args.no_checkpointing and enable_checkpointing(model)
    parameters = dict(model.named_parameters())
    trained = sum(parameters[name].numel() for name in trainable)
    total = sum(parameter.numel() for parameter in parameters.values())
    print(
        f"built in {built_s:.0f} s: {_count(total)} parameters in {model.dtype}, "
        f"{_count(trained)} trained (stage {args.stage}), weights {_gib(memory_gib(device))}"
    )
    optimizer = None
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(
            [parameters[name] for name in trainable], lr=1e-5, fused=device.type == "cuda"
        )
    batch = make_batch(model, args.batch, args.text_tokens, device)
    step = training_step(model, batch, optimizer)
    print(
        f"batch {args.batch} x ({args.text_tokens} text + {model.num_visual_tokens()} visual "
        f"tokens), activation checkpointing {'on' if checkpointing else 'off'}, "
        f"optimizer {args.optimizer}"
    )
    try:
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, losses = [], []
        for _ in range(args.steps):
            synchronize(device)
            start = time.perf_counter()
            losses.append(step())
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as error:
        sys.exit(
            f"Out of device memory (peak {_gib(memory_gib(device, peak=True))}): {error}\n"
            "Try --batch 1, leave activation checkpointing on, or --optimizer none"
        )
    step_s = statistics.median(times)
    print(f"step time       {step_s * 1e3:.0f} ms (median of {args.steps}; loss {losses[-1]:.3f})")
    print(f"tokens/s        {batch.llm_tokens / step_s:,.0f} (LLM positions, visual included)")
    print(f"peak memory     {_gib(memory_gib(device, peak=True))} (max_memory_allocated)")


if __name__ == "__main__":
    main()
