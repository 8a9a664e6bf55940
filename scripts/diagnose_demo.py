"""Why does a trained demo run ground (or fail to ground) its referring expressions? Measures,
on the run's REC records (train and held-out):

- the loss and teacher-forced accuracy on the four coordinate tokens of each box, the mean
  error in coordinate bins, and the rate of teacher-forced boxes with IoU >= 0.5;
- attention: where each layer looks from the token that predicts the first coordinate, as
  the share of the attention on visual tokens that falls on the referred object's grid cells,
  against the share of cells it covers (what uniform attention gives);
- what the visual tokens encode: linear probes (ridge, fitted on train objects, scored on
  held-out ones) from the grid token under each object's centre to its colour, shape and box,
  against a probe that only knows which cell the centre falls in.

Run: `.venv/bin/python scripts/diagnose_demo.py runs/demo [--limit 200]`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from sphinx_mllm.data.synthetic.colours import COLOUR_NAMES
from sphinx_mllm.data.synthetic.shapes import SHAPES
from sphinx_mllm.pipeline import SphinxModel
from sphinx_mllm.pipeline.tokenizers import COORDINATE_TOKENS


def rec_records(run: Path, split: str, limit: int) -> list[dict]:
    path = run / "data" / "tasks" / split / "rec.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()[:limit]]
    for record in records:
        record["image_path"] = run / "data" / record["image"]
    return records


def box_of(text: str) -> list[float]:
    return [float(v) for v in text.strip("[]").split(",")]


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@torch.no_grad()
def coordinate_and_attention(model: SphinxModel, records: list[dict]) -> dict[str, float]:
    processor = model.processor
    coordinate_ids = {
        processor.tokenizer.convert_tokens_to_ids(t): float(t) for t in COORDINATE_TOKENS
    }
    id_list = torch.tensor(sorted(coordinate_ids))
    values = torch.tensor([coordinate_ids[int(i)] for i in id_list])
    grid = next(iter(model.visual.mixer.grid_cells("global").values()))
    rows, cols = grid.shape
    losses, hits, errors, box_hits = [], [], [], []
    attention_on_object: list[list[float]] = []
    chance = []
    for record in records:
        turns = record["conversations"][:2]
        image = Image.open(record["image_path"]).convert("RGB")
        inputs = processor([turns], [[image]])
        embedded = model.embed_inputs(
            inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], inputs["labels"]
        )
        sequence = embedded.sequence
        out = model.llm.get_decoder()(
            inputs_embeds=embedded.inputs_embeds,
            attention_mask=sequence.attention_mask,
            position_ids=sequence.position_ids,
            output_attentions=True,
            use_cache=False,
        )
        logits = model.llm.get_output_embeddings()(out.last_hidden_state)[0]
        labels = sequence.labels[0]
        targets = [p for p in range(1, labels.numel()) if int(labels[p]) in coordinate_ids]
        if len(targets) != 4:
            continue
        predicted = []
        for p in targets:
            row = logits[p - 1]
            losses.append(float(torch.nn.functional.cross_entropy(row[None], labels[p][None])))
            hits.append(float(row.argmax() == labels[p]))
            guess = float(values[row[id_list].argmax()])
            predicted.append(guess)
            errors.append(abs(guess - coordinate_ids[int(labels[p])]) * 100)
        truth = box_of(turns[1]["value"])
        box_hits.append(float(iou(predicted, truth) >= 0.5))
        # the image's visual tokens and which of them lie on the referred object
        image_positions = sequence.image_mask[0].nonzero().flatten()
        x0, y0, x1, y1 = truth
        on_object = torch.zeros(len(image_positions), dtype=torch.bool)
        for r in range(rows):
            for c in range(cols):
                cx0, cy0, cx1, cy1 = c / cols, r / rows, (c + 1) / cols, (r + 1) / rows
                if min(cx1, x1) > max(cx0, x0) and min(cy1, y1) > max(cy0, y0):
                    on_object[int(grid[r, c])] = True
        chance.append(float(on_object.sum()) / rows / cols)
        query = targets[0] - 1
        shares = []
        for layer in out.attentions:
            weights = layer[0, :, query, image_positions].mean(0)  # heads averaged
            shares.append(float(weights[on_object].sum() / weights.sum()))
        attention_on_object.append(shares)
    count = len(box_hits)
    layers = torch.tensor(attention_on_object).mean(0).tolist()
    return {
        "records": count,
        "coordinate loss": sum(losses) / len(losses),
        "coordinate accuracy": sum(hits) / len(hits),
        "coordinate error (bins of 0.01)": sum(errors) / len(errors),
        "teacher-forced Acc@0.5": sum(box_hits) / count,
        "attention share on object, per layer": [round(v, 3) for v in layers],
        "uniform attention share": sum(chance) / count,
    }


@torch.no_grad()
def object_features(model: SphinxModel, records: list[dict]) -> tuple[torch.Tensor, ...]:
    """Each record's referred object: the grid token under its centre, the one-hot of that
    cell, and its colour, shape and box."""
    processor = model.processor
    grid = next(iter(model.visual.mixer.grid_cells("global").values()))
    features, cells, colours, shapes, boxes = [], [], [], [], []
    for record in records:
        image = Image.open(record["image_path"]).convert("RGB")
        pixels = processor.preprocess(image)
        tokens = model.encode_images([pixels]).tokens[0]
        x0, y0, x1, y1 = record["meta"]["bbox_xyxy"]
        token = int(model.visual.grid_tokens_at(image.size, [((x0 + x1) / 2, (y0 + y1) / 2)])[0])
        features.append(tokens[token].float())
        cell = torch.zeros(grid.numel())
        cell[(grid.flatten() == token).nonzero()[0]] = 1
        cells.append(cell)
        words = record["conversations"][0]["value"].rstrip(".").split()[-2:]
        colours.append(COLOUR_NAMES.index(words[0]))
        shapes.append(SHAPES.index(words[1]))
        width, height = image.size
        boxes.append(torch.tensor([x0 / width, y0 / height, x1 / width, y1 / height]))
    return (
        torch.stack(features),
        torch.stack(cells),
        torch.tensor(colours),
        torch.tensor(shapes),
        torch.stack(boxes),
    )


def ridge(x: torch.Tensor, y: torch.Tensor, strength: float = 1e-2) -> torch.Tensor:
    x = torch.cat([x, torch.ones(len(x), 1)], 1)
    gram = x.T @ x + strength * torch.eye(x.shape[1])
    return torch.linalg.solve(gram, x.T @ y)


def apply(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1)], 1) @ weights


def probes(train: tuple[torch.Tensor, ...], held_out: tuple[torch.Tensor, ...]) -> dict:
    result = {}
    for name, index in (("visual token", 0), ("centre cell only", 1)):
        x, x_test = train[index], held_out[index]
        for label, position, classes in (("colour", 2, len(COLOUR_NAMES)), ("shape", 3, 5)):
            onehot = torch.nn.functional.one_hot(train[position], classes).float()
            guess = apply(ridge(x, onehot), x_test).argmax(1)
            hit = (guess == held_out[position]).float()
            result[f"{name}: {label} accuracy"] = float(hit.mean())
        predicted = apply(ridge(x, train[4]), x_test).clamp(0, 1)
        result[f"{name}: box mean abs error"] = float((predicted - held_out[4]).abs().mean())
        hits = [
            iou(p.tolist(), t.tolist()) >= 0.5 for p, t in zip(predicted, held_out[4], strict=True)
        ]
        result[f"{name}: box Acc@0.5"] = sum(hits) / len(hits)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    model = SphinxModel.from_pretrained(args.run / "model").eval()
    model.llm.config._attn_implementation = "eager"  # attention weights are returned
    report = {}
    splits = {"train": "train", "held-out": "val"}
    for label, split in splits.items():
        records = rec_records(args.run, split, args.limit)
        report[label] = coordinate_and_attention(model, records)
    train_features = object_features(model, rec_records(args.run, "train", 4 * args.limit))
    held_features = object_features(model, rec_records(args.run, "val", args.limit))
    report["probes (fitted on train objects, scored held-out)"] = probes(
        train_features, held_features
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
