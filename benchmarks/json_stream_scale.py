"""sphinx-data's streaming JSON reader at the scale of COCO's instances_train2017.json (448 MB):
time and peak memory against `json.load`.

A COCO-layout file is generated into a temporary folder, in COCO's key order (info, licenses,
images, annotations, categories: the categories come last, after hundreds of megabytes of
annotations), with COCO's proportions (118,000 images and about 520 bytes per annotation, most
of it a segmentation polygon, at 448 MB). Each measurement runs in a child process of its own,
so that its peak resident memory is its own:

- `json.load`: the whole file as Python objects (the baseline);
- `stream`: the elements of `annotations`, one at a time (`iter_array`);
- `CocoFile`: the reader as `sphinx-data build detection` uses it: images and categories
  indexed, every annotation read, validated and grouped by image (`objects_by_image`).

Target: `CocoFile` within 2x of `json.load`'s time, its memory no higher.

    .venv/bin/python benchmarks/json_stream_scale.py [--megabytes 400] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES_AT_448_MB = 118_000
CATEGORIES = 80
WIDTH, HEIGHT = 640, 480


def write_coco_file(path: Path, megabytes: float, seed: int = 0) -> dict[str, int]:
    """A valid COCO instances file of about `megabytes` MB; returns its record counts."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    images = max(1, round(IMAGES_AT_448_MB * megabytes / 448))
    annotations = 0
    with path.open("w", encoding="utf-8") as out:
        out.write('{"info": {"description": "synthetic COCO-layout file", "year": 2017}, ')
        out.write('"licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}], "images": [')
        for index in range(images):
            image = {
                "license": 1,
                "file_name": f"{index:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/train2017/{index:012d}.jpg",
                "height": HEIGHT,
                "width": WIDTH,
                "date_captured": "2013-11-14 17:02:52",
                "flickr_url": "http://farm3.staticflickr.com/x.jpg",
                "id": index,
            }
            out.write((", " if index else "") + json.dumps(image))
        out.write('], "annotations": [')
        while out.tell() < target:
            x, y = rng.uniform(0, 300), rng.uniform(0, 200)
            w, h = rng.uniform(1, 300), rng.uniform(1, 200)
            polygon = [round(rng.uniform(0, 400), 2) for _ in range(2 * rng.randint(6, 40))]
            annotation = {
                "segmentation": [polygon],
                "area": round(w * h, 4),
                "iscrowd": 0,
                "image_id": rng.randrange(images),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "category_id": rng.randint(1, CATEGORIES),
                "id": annotations,
            }
            out.write((", " if annotations else "") + json.dumps(annotation))
            annotations += 1
        categories = [
            {"supercategory": "thing", "id": i, "name": f"category {i}"}
            for i in range(1, CATEGORIES + 1)
        ]
        out.write('], "categories": ' + json.dumps(categories) + "}")
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def measure(mode: str, path: str) -> dict:
    """Run in the child process: read the file one way; its time, records and peak RSS."""
    started = time.perf_counter()
    if mode == "json.load":
        with open(path, encoding="utf-8") as file:
            records = len(json.load(file)["annotations"])
    elif mode == "stream":
        from sphinx_mllm.data.readers import iter_array

        records = sum(1 for _ in iter_array(path, "annotations"))
    else:
        from sphinx_mllm.data.readers import CocoFile

        grouped = CocoFile(path).objects_by_image()
        records = sum(len(objects) for objects in grouped.values())
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": mode, "seconds": seconds, "records": records, "peak_mb": peak_mb}


def in_child(mode: str, path: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=400, help="size of the file")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, best time kept")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "instances.json"
        started = time.perf_counter()
        counts = write_coco_file(path, args.megabytes)
        size, seconds = path.stat().st_size / 1e6, time.perf_counter() - started
        print(
            f"{size:.0f} MB COCO-layout file ({counts['images']:,} images, "
            f"{counts['annotations']:,} annotations) written in {seconds:.0f} s"
        )
        results = {}
        for mode in ("json.load", "stream", "CocoFile"):
            runs = [in_child(mode, path) for _ in range(args.repeat)]
            results[mode] = min(runs, key=lambda run: run["seconds"])
            if results[mode]["records"] != counts["annotations"]:
                raise RuntimeError(f"{mode} read {results[mode]['records']:,} annotations")
        base = results["json.load"]
        print(
            f"{'reader':<10} {'time':>8} {'x json.load':>12} {'peak RSS':>10} {'x json.load':>12}"
        )
        for mode, run in results.items():
            print(
                f"{mode:<10} {run['seconds']:>7.1f}s {run['seconds'] / base['seconds']:>12.2f} "
                f"{run['peak_mb']:>8.0f}MB {run['peak_mb'] / base['peak_mb']:>12.2f}"
            )


if __name__ == "__main__":
    main()
