"""What do a trained model's visual tokens know? Linear probes of object attributes.

For every object of a synthetic COCO-format train split (`sphinx-data synth`:
`instances_train.json`, whose category names are "<colour> <shape>"), the visual token of the
grid cell under the object's centre is taken from the model (`encode_images`, what the LLM
sees); a linear classifier is fitted on the objects of the first three quarters of the images to
predict the object's shape, and its colour, and scored on the objects of the last quarter. The
same probes are run on the same architecture at random initialisation (the named baseline): a
probe well above the baseline means training put that attribute into the tokens; near chance
means the LLM cannot read it from them, whatever it learns.

    .venv/bin/python benchmarks/visual_token_probe.py [--model runs/demo/model]
        [--data runs/demo/data] [--images 2000]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from PIL import Image

from sphinx_mllm.pipeline.model import SphinxModel

PROBE_STEPS = 500
ATTRIBUTES = {"colour": 0, "shape": -1}  # the word of "<colour> <shape>" each probe predicts
Samples = tuple[torch.Tensor, list[str]]


def object_tokens(
    model: SphinxModel, data: Path, images: list[dict], names: dict[int, str], objects: dict
) -> Samples:
    """The visual token under each object's centre in `images`, and the object's category."""
    features, labels = [], []
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        files = [data / "images" / "train" / image["file_name"] for image in chunk]
        views = [model.processor.preprocess(Image.open(file)) for file in files]
        with torch.no_grad():
            visual = model.encode_images(views)
        for row, image in enumerate(chunk):
            grid = next(s for s in visual.segments[row] if s.label == "grid")
            side = math.isqrt(grid.end - grid.start)
            first = grid.end - side * side  # leading non-grid tokens (a pooled token) come first
            for annotation in objects.get(image["id"], []):
                x, y, width, height = annotation["bbox"]
                column = min(side - 1, int((x + width / 2) / image["width"] * side))
                line = min(side - 1, int((y + height / 2) / image["height"] * side))
                features.append(visual.tokens[row, first + line * side + column].float())
                labels.append(names[annotation["category_id"]])
    return torch.stack(features), labels


def relabel(samples: Samples, word: int) -> Samples:
    return samples[0], [name.split()[word] for name in samples[1]]


def probe_accuracy(fit: Samples, score: Samples) -> float:
    """Accuracy on `score` of a linear classifier fitted on `fit` (standardised features)."""
    classes = sorted(set(fit[1]))
    index = {name: position for position, name in enumerate(classes)}
    x, y = fit[0], torch.tensor([index[label] for label in fit[1]])
    mean, std = x.mean(0), x.std(0) + 1e-6
    probe = torch.nn.Linear(x.shape[1], len(classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(PROBE_STEPS):
        loss = torch.nn.functional.cross_entropy(probe((x - mean) / std), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    known = [i for i, label in enumerate(score[1]) if label in index]
    score_y = torch.tensor([index[score[1][i]] for i in known])
    with torch.no_grad():
        predicted = probe((score[0][known] - mean) / std).argmax(1)
    return float((predicted == score_y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/model"))
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"))
    parser.add_argument("--images", type=int, default=2000, help="train-split images probed")
    args = parser.parse_args()
    torch.manual_seed(0)
    trained = SphinxModel.from_pretrained(args.model).eval()
    baseline = SphinxModel.from_config(trained.config).eval()
    instances = json.loads((args.data / "instances_train.json").read_text())
    names = {category["id"]: category["name"] for category in instances["categories"]}
    objects: dict[int, list[dict]] = {}
    for annotation in instances["annotations"]:
        objects.setdefault(annotation["image_id"], []).append(annotation)
    images = instances["images"][: args.images]
    cut = len(images) * 3 // 4
    results = {}
    for label, model in (("random init", baseline), ("trained", trained)):
        fit = object_tokens(model, args.data, images[:cut], names, objects)
        score = object_tokens(model, args.data, images[cut:], names, objects)
        for attribute, word in ATTRIBUTES.items():
            results[label, attribute] = probe_accuracy(relabel(fit, word), relabel(score, word))
    print(f"{len(fit[1])} objects to fit, {len(score[1])} to score; the centre token probed")
    print(f"{'attribute':<10} {'chance':>7} {'random init':>12} {'trained':>8} {'ratio':>6}")
    for attribute, word in ATTRIBUTES.items():
        chance = 1 / len({name.split()[word] for name in fit[1]})
        before, after = results["random init", attribute], results["trained", attribute]
        row = f"{chance:>7.2f} {before:>12.3f} {after:>8.3f} {after / before:>6.2f}"
        print(f"{attribute:<10} {row}")


if __name__ == "__main__":
    main()
