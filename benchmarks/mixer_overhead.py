"""Overhead of the sphinx-mixer visual stack over its encoders, and view-splitting throughput.

1. `stack(views)` (resize per encoder, normalise, every encoder, grid alignment, projection,
   start/end) against the baseline: the sum of the encoders' own forwards on the same views,
   already resized and normalised. Interleaved runs, ratio of medians (target <= 1.10).
2. Views split per second (PIL image -> padded canvas -> global view + tiles) at 448 (2x2) and
   672 (3x3) from a 1000x700 photo-sized image.

    .venv/bin/python benchmarks/mixer_overhead.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image

from sphinx_mllm.encoders import create_encoder
from sphinx_mllm.encoders.transforms import normalize
from sphinx_mllm.mixer import EncoderStream, VisualStack, get_view_splitter


def tiny_sphinx() -> VisualStack:
    streams = [
        EncoderStream(create_encoder("tiny_clip_vit")),
        EncoderStream(create_encoder("tiny_clip_convnext"), image_size=64, resize="nearest"),
        EncoderStream(create_encoder("tiny_dinov2", img_size=32, patch_size=8)),
        EncoderStream(create_encoder("tiny_blip2_qformer")),
    ]
    return VisualStack(
        "global_grid", streams, out_dim=64, splitter_options={"base_size": 32, "grid": 2}
    )


def small_sphinx() -> VisualStack:
    """SPHINX's composition at base size: 14x14 grids (ConvNeXt's 7x7 repeated), 5 views."""
    streams = [
        EncoderStream(create_encoder("clip_vit_b16")),
        EncoderStream(
            create_encoder("open_clip_convnext", model_name="convnext_base"), image_size=224
        ),
        EncoderStream(create_encoder("dinov2_vitb14", img_size=196), image_size=196),
    ]
    return VisualStack(
        "global_grid", streams, out_dim=2048, splitter_options={"base_size": 224, "grid": 2}
    )


def encoders_alone(stack: VisualStack, views: torch.Tensor) -> list[tuple]:
    """Each encoder's own forward on the views it sees inside the stack, prepared in advance."""
    flat = views.flatten(0, 1)
    prepared = []
    for stream in stack.streams.values():
        pixels = (
            flat
            if tuple(flat.shape[-2:]) == stream.size
            else F.interpolate(flat, size=stream.size, mode=stream.resize)
        )
        prepared.append(
            (stream.encoder, normalize(pixels, stream.encoder.mean, stream.encoder.std))
        )
    return prepared


def time_stack(label: str, stack: VisualStack, batch: int, repeats: int) -> float:
    torch.manual_seed(0)
    side = stack.splitter.base_size
    views = torch.rand(batch, stack.splitter.fixed_views, 3, side, side)
    prepared = encoders_alone(stack, views)

    def baseline() -> None:
        for encoder, pixels in prepared:
            encoder(pixels)

    ours, theirs = [], []
    with torch.no_grad():
        for _ in range(2):
            stack(views)
            baseline()
        for index in range(repeats):
            order = [("ours", lambda: stack(views)), ("base", baseline)]
            for which, run in order if index % 2 == 0 else reversed(order):
                start = time.perf_counter()
                run()
                (ours if which == "ours" else theirs).append(time.perf_counter() - start)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label:<34} {batch:>5} {a * 1e3:>10.1f} {b * 1e3:>12.1f} {a / b:>6.3f}")
    return a / b


def views_per_second(grid: int, repeats: int) -> None:
    image = Image.new("RGB", (1000, 700), (90, 140, 200))
    splitter = get_view_splitter("global_grid")(base_size=224, grid=grid)
    splitter.split(image)
    start = time.perf_counter()
    for _ in range(repeats):
        splitter.split(image)
    elapsed = time.perf_counter() - start
    views = repeats * (1 + grid * grid)
    print(
        f"split at {224 * grid} (global + {grid}x{grid}): {repeats / elapsed:,.0f} images/s "
        f"= {views / elapsed:,.0f} views/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"baseline: the sum of the encoders' own forwards on the same prepared views "
        f"(torch {torch.__version__}, {args.threads} threads, medians)"
    )
    print(f"{'stack':<34} {'batch':>5} {'stack ms':>10} {'encoders ms':>12} {'ratio':>6}")
    ratios = [
        time_stack("tiny SPHINX-1k (4 encoders, 5 views)", tiny_sphinx(), 8, 100),
        time_stack("small SPHINX-1k (B-size, 5 views)", small_sphinx(), 2, 6),
    ]
    print(f"worst ratio {max(ratios):.3f} (target <= 1.10)")
    views_per_second(2, 200)
    views_per_second(3, 200)


if __name__ == "__main__":
    main()
