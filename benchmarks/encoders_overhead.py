"""Overhead of the sphinx-encoders adapters over a direct call of the wrapped library.

For each adapter, on a tiny and a small configuration, times `encoder(pixels)` against the call a
user would make on the same library module without us (same weights, same input, autograd off in
both; the same output), interleaved, and prints the ratio of the medians (target: <= 1.05).
Tiny models repeat 300 times, small ones (ViT-B size, about 1 s a batch here) 8 times.

    .venv/bin/python benchmarks/encoders_overhead.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from sphinx_mllm.encoders import create_encoder


def direct_open_clip_vit(encoder):
    visual = encoder.model
    layer = len(visual.transformer.resblocks) - 1

    def run(pixels):
        out = visual.forward_intermediates(
            pixels,
            indices=[layer],
            stop_early=True,
            normalize_intermediates=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], 1)

    return run


def direct_open_clip_convnext(encoder):
    trunk = encoder.model.trunk

    def run(pixels):
        feature_map = trunk.head.norm(trunk.forward_features(pixels))
        tokens = feature_map.flatten(2).transpose(1, 2)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], 1)

    return run


def direct_timm(encoder):
    model = encoder.model
    prefix = model.num_prefix_tokens

    def run(pixels):  # CLS + patches: the register tokens dropped, as the adapter does
        features = model.forward_features(pixels)
        return features if prefix == 1 else torch.cat([features[:, :1], features[:, prefix:]], 1)

    return run


def direct_hf(encoder):
    model = encoder.model

    def run(pixels):
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]

    return run


def direct_qformer(encoder):
    parts = encoder.model

    def run(pixels):
        image_embeds = parts.vision_model(pixel_values=pixels).last_hidden_state
        queries = parts.query_tokens.expand(pixels.shape[0], -1, -1)
        return parts.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds
        ).last_hidden_state

    return run


SMALL_BLIP2 = {
    "vision_config": {
        "hidden_size": 384,
        "intermediate_size": 1536,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "image_size": 224,
        "patch_size": 14,
    },
    "qformer_config": {
        "hidden_size": 384,
        "intermediate_size": 1536,
        "num_hidden_layers": 4,
        "num_attention_heads": 6,
        "encoder_hidden_size": 384,
    },
    "num_query_tokens": 32,
}

# (label, encoder name, create_encoder options, direct call, batch); "tiny" in a label marks the
# cases timed with --tiny-repeats
CASES: list[tuple[str, str, dict, Callable, int]] = [
    ("open_clip ViT tiny", "tiny_clip_vit", {}, direct_open_clip_vit, 8),
    ("open_clip ViT-B/16", "clip_vit_b16", {}, direct_open_clip_vit, 4),
    ("open_clip ConvNeXt tiny", "tiny_clip_convnext", {}, direct_open_clip_convnext, 8),
    (
        "open_clip ConvNeXt-B",
        "open_clip_convnext",
        {"model_name": "convnext_base"},
        direct_open_clip_convnext,
        4,
    ),
    ("timm DINOv2 tiny (reg4)", "tiny_dinov2_reg4", {}, direct_timm, 8),
    ("timm DINOv2 ViT-B/14", "dinov2_vitb14", {}, direct_timm, 4),
    ("HF CLIP tiny", "tiny_hf_clip", {}, direct_hf, 8),
    ("HF CLIP ViT-B/32", "hf_vision", {}, direct_hf, 4),
    ("BLIP-2 Q-Former tiny", "tiny_blip2_qformer", {}, direct_qformer, 8),
]


def time_once(function: Callable, pixels: torch.Tensor) -> float:
    start = time.perf_counter()
    function(pixels)
    return time.perf_counter() - start


def measure(encoder, direct, batch: int, repeats: int) -> tuple[float, float]:
    pixels = torch.randn(batch, 3, *encoder.input_size)
    ours, theirs = [], []
    with torch.no_grad():
        for _ in range(3):  # warm-up: allocator, lazy initialisation
            encoder(pixels)
            direct(pixels)
        for index in range(repeats):  # interleaved, alternating order
            first, second = (encoder, direct) if index % 2 == 0 else (direct, encoder)
            a, b = time_once(first, pixels), time_once(second, pixels)
            ours.append(a if first is encoder else b)
            theirs.append(b if first is encoder else a)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-repeats", type=int, default=300)
    parser.add_argument("--small-repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        "baseline: a direct call of the wrapped library on the same module "
        f"(torch {torch.__version__}, {args.threads} threads, medians)"
    )
    print(f"{'adapter':<26} {'batch':>5} {'ours ms':>9} {'direct ms':>10} {'ratio':>6}")
    ratios = []
    for label, name, options, make_direct, batch in CASES:
        encoder = create_encoder(name, **options)
        repeats = args.tiny_repeats if "tiny" in label else args.small_repeats
        ours, theirs = measure(encoder, make_direct(encoder), batch, repeats)
        ratios.append(ours / theirs)
        print(
            f"{label:<26} {batch:>5} {ours * 1e3:>9.2f} {theirs * 1e3:>10.2f} {ours / theirs:>6.3f}"
        )
    mean = statistics.geometric_mean(ratios)
    print(f"worst ratio {max(ratios):.3f}, geometric mean {mean:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
