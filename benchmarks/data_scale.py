"""Streamed training data at LLaVA-665k's scale: time to the first batch and memory against the
data set's size, and the loader's speed against the demo model's training steps.

Two LLaVA-format JSONL files are generated (200,000 and 2,000 records, LLaVA-665k's mix: most
records one image, a few several, a fifth text-only, one to six rounds), their images a handful
of real JPEG files (640x480, noisy, so that decoding costs what a photo's does) named over and
over. Each file is measured in a child process of its own, with the `demo` preset's processor:

- time to the first batch ready for the optimizer step: `StreamedData.build` (the index pass,
  cold: no cache beside the file yet) and the first `LocalBatch` out of a loader with 2 workers;
  again with the index cached (a second run on the same file);
- the main process's RSS growth over that (after the model is built and warmed up), at the
  first batch and at its peak (sampled every 5 ms, through the loader's steady state too; the
  epoch's batch order is built with Python objects for a moment), and the workers' own (USS)
  memory;
- the loader's samples per second in the steady state (after its prefetched batches), alone;
  the demo model's training steps (forward, backward, AdamW) on the same batches, alone; and a
  run that trains while the loader streams (on this machine's CPUs the two compete).

Targets: first batch under 10 s and RSS growth under 300 MB at 200,000 records. Printed too: the
ratio of the 200,000-record peak growth to the 2,000-record one, and the bytes each record adds
(the index keeps 22 a record, the batching a few more; no Python object per record).

    .venv/bin/python benchmarks/data_scale.py [--records 200000 2000] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCABULARY = (
    "the a man woman dog cat red blue green left right small large near table car tree street "
    "what is there how many people sitting standing holding looking picture image shows two"
)
WORDS = VOCABULARY.split(" ")
IMAGES = 8
MAX_LENGTH = 1024
TARGET_SECONDS, TARGET_MB = 10.0, 300.0


def write_images(root: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for index in range(IMAGES):
        ramp = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
        noise = rng.normal(0, 40, (480, 640, 3)).astype(np.float32)
        pixels = np.clip(ramp * (index + 1) / IMAGES + noise + 40 * index % 255, 0, 255)
        name = f"img{index}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(root / name, quality=90)
        names.append(name)
    return names


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def write_records(path: Path, count: int, images: list[str], seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for index in range(count):
            kind = rng.random()
            names = (
                [] if kind < 0.2 else rng.sample(images, 1 if kind < 0.98 else rng.randint(2, 3))
            )
            turns = []
            for round_ in range(rng.choice([1, 1, 1, 2, 2, 3, 4, 6])):
                question = _sentence(rng, 5, 20) + "?"
                if round_ == 0 and names:
                    question = "<image>\n" * len(names) + question
                turns.append({"from": "human", "value": question})
                turns.append({"from": "gpt", "value": _sentence(rng, 3, 60) + "."})
            record = {"id": f"r{index}", "conversations": turns}
            if names:
                record["image"] = names if len(names) > 1 else names[0]
            out.write(json.dumps(record) + "\n")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRss:
    """The highest RSS of this process, sampled every 5 ms by a thread while in the block."""

    def __enter__(self) -> PeakRss:
        import threading

        self.peak_mb = _rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def _workers_uss_mb() -> float:
    import psutil

    return sum(child.memory_full_info().uss for child in psutil.Process().children()) / 2**20


def _first_batch(processor, source, batch: int) -> tuple[float, float, object, object]:
    """(seconds to index, seconds to the first batch, the data, the running loader)."""
    from sphinx_mllm.pipeline.training.streaming import StreamedData

    started = time.perf_counter()
    data = StreamedData.build(processor, [source], max_length=MAX_LENGTH, on_error="raise")
    indexed = time.perf_counter()
    loader = data.loader(batch, seed=0, num_workers=2, prefetch_factor=2)
    shares = iter(loader)
    first = next(shares)
    first.batch.input_ids.sum()  # the tensors are in this process
    return indexed - started, time.perf_counter() - started, loader, shares


def measure(path: Path, batch: int, steps: int, loader_batches: int) -> dict:
    """Run in the child process: everything measured on one file."""
    import torch

    from sphinx_mllm.pipeline.building import build_model
    from sphinx_mllm.pipeline.images import open_image
    from sphinx_mllm.pipeline.training.data import DataSource

    torch.manual_seed(0)
    model = build_model("demo")
    processor = model.processor
    source = DataSource(path, 1.0, path.parent)
    processor.preprocess(open_image(path.parent / "img0.jpg"))  # warm every lazy import
    processor.render([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}],
                     num_images=0)  # fmt: skip
    before = _rss_mb()
    with PeakRss() as peak:
        index_s, first_s, loader, shares = _first_batch(processor, source, batch)
        growth = _rss_mb() - before
        workers = _workers_uss_mb()
        skipped = [next(shares) for _ in range(4)]  # the prefetched ones
        started = time.perf_counter()
        timed = [next(shares) for _ in range(loader_batches)]
        loader_rate = loader_batches * batch / (time.perf_counter() - started)
    peak_growth = peak.peak_mb - before
    loader.close()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(local) -> None:
        b = local.batch
        model(b.input_ids, b.pixel_values, b.attention_mask, b.labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(skipped[0])  # warm-up
    started = time.perf_counter()
    for local in timed[:steps]:
        step(local)
    model_rate = steps * batch / (time.perf_counter() - started)
    with loader:  # the same batches again, trained on while the workers load the next ones
        shares = iter(loader)
        for _ in range(1 + len(skipped)):
            next(shares)
        started = time.perf_counter()
        for _ in range(steps):
            step(next(shares))
        both_rate = steps * batch / (time.perf_counter() - started)
    _, cached_first_s, again, _ = _first_batch(processor, source, batch)
    again.close()
    return {
        "index_s": index_s, "first_s": first_s, "cached_first_s": cached_first_s,
        "rss_growth_mb": growth, "peak_growth_mb": peak_growth, "workers_uss_mb": workers,
        "loader_rate": loader_rate, "model_rate": model_rate, "both_rate": both_rate,
    }  # fmt: skip


def in_child(path: Path, batch: int, steps: int, loader_batches: int) -> dict:
    command = [sys.executable, __file__, "--child", str(path), "--batch", str(batch),
               "--steps", str(steps), "--loader-batches", str(loader_batches)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"the measurement of {path} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs=2, default=[200_000, 2_000])
    parser.add_argument("--batch", type=int, default=16, help="global batch size (one rank)")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed")
    parser.add_argument("--loader-batches", type=int, default=24, help="batches timed, loader")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.steps, args.loader_batches)))
        return
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        images = write_images(root)
        results = {}
        for count in args.records:
            path = root / f"llava_{count}.jsonl"
            started = time.perf_counter()
            write_records(path, count, images)
            size = path.stat().st_size / 1e6
            seconds = time.perf_counter() - started
            print(f"{count:,} records ({size:.0f} MB) written in {seconds:.1f} s")
            results[count] = in_child(path, args.batch, args.steps, args.loader_batches)
    print(
        f"{'records':>8} {'index':>7} {'1st batch':>9} {'cached':>7} {'RSS +':>7} "
        f"{'peak +':>7} {'workers':>8} {'loader/s':>9} {'model/s':>8} {'both/s':>7}"
    )
    for count, run in results.items():
        print(
            f"{count:>8,} {run['index_s']:>6.2f}s {run['first_s']:>8.2f}s "
            f"{run['cached_first_s']:>6.2f}s {run['rss_growth_mb']:>5.0f}MB "
            f"{run['peak_growth_mb']:>5.0f}MB {run['workers_uss_mb']:>6.0f}MB "
            f"{run['loader_rate']:>9.0f} {run['model_rate']:>8.1f} {run['both_rate']:>7.1f}"
        )
    large, small = (results[count] for count in args.records)
    ratio = max(large["peak_growth_mb"], 1.0) / max(small["peak_growth_mb"], 1.0)
    per_record = (large["peak_growth_mb"] - small["peak_growth_mb"]) * 2**20
    per_record /= args.records[0] - args.records[1]
    print(
        f"peak RSS growth {args.records[0]:,} vs {args.records[1]:,} records: {ratio:.1f}x "
        f"({large['peak_growth_mb']:.0f} MB vs {small['peak_growth_mb']:.0f} MB; "
        f"{per_record:.0f} bytes a record)"
    )
    print(
        f"{args.records[0]:,} records: first batch {large['first_s']:.2f} s (target < "
        f"{TARGET_SECONDS:.0f} s), RSS growth {large['peak_growth_mb']:.0f} MB (target < "
        f"{TARGET_MB:.0f} MB)"
    )
    print(
        f"loader {large['loader_rate']:.0f} samples/s vs the demo model's training "
        f"{large['model_rate']:.1f} samples/s at batch {args.batch}: "
        f"{large['loader_rate'] / large['model_rate']:.1f}x (>= 1: the model never waits)"
    )


if __name__ == "__main__":
    main()
