"""PNG figures of a run: the training curve (loss and learning rate by step, held-out scores by
step and at the end when there are some) and held-out images with the boxes the model
predicted; and the held-out scores by step as a text table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


def read_curve(curve_file: Path) -> tuple[list[int], dict[str, list[float]]]:
    """The steps of an `eval_curve.jsonl` and each task's scores at them (NaN where a task was
    not scored)."""
    records = _read_jsonl(curve_file)
    steps = [record["step"] for record in records]
    tasks = sorted({task for record in records for task in record["tasks"]})
    scores = {
        task: [record["tasks"].get(task, {}).get("score", math.nan) for record in records]
        for task in tasks
    }
    return steps, scores


def curve_table(curve_file: Path) -> str:
    """Held-out scores by step, a row per step and a column per task."""
    steps, scores = read_curve(curve_file)
    widths = {task: max(5, len(task)) for task in scores}
    lines = ["   step " + " ".join(f"{task:>{widths[task]}}" for task in scores)]
    for index, step in enumerate(steps):
        cells = " ".join(f"{scores[task][index]:>{widths[task]}.3f}" for task in scores)
        lines.append(f"  {step:>5} {cells}")
    return "\n".join(lines)


def plot_training_curve(
    metrics_file: Path,
    out: Path,
    evaluation: dict[str, dict[str, Any]] | None = None,
    curve_file: Path | None = None,
) -> Path:
    """Loss (raw and smoothed) and learning rate against step; held-out scores against step
    (`curve_file`, an `eval_curve.jsonl`); final per-task scores as a bar panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_jsonl(metrics_file)
    if not rows:
        raise ValueError(f"{metrics_file} holds no step to plot")
    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    panels = 2 + (curve_file is not None) + bool(evaluation)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    axes[0].plot(steps, losses, color="0.75", linewidth=0.8, label="loss")
    axes[0].plot(steps, _smoothed(losses), color="C0", label="smoothed")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss")
    axes[0].legend()
    axes[1].plot(steps, [row["lr"] for row in rows], color="C1")
    axes[1].set_xlabel("step")
    axes[1].set_title("learning rate")
    if curve_file is not None:
        curve_steps, scores = read_curve(curve_file)
        for task, values in scores.items():
            axes[2].plot(curve_steps, values, marker="o", markersize=3, label=task)
        # scores are fractions, except CIDEr (0 to 10): the axis reaches the highest one
        axes[2].set_ylim(0, max([1.0, *(v for values in scores.values() for v in values)]))
        axes[2].set_xlabel("step")
        axes[2].set_title("held-out score by step")
        axes[2].legend(fontsize=7)
    if evaluation:
        bars = axes[-1]
        tasks = list(evaluation)
        bars.barh(tasks, [evaluation[task]["score"] for task in tasks], color="C2")
        bars.set_xlim(0, max([1.0, *(evaluation[task]["score"] for task in tasks)]))
        bars.set_title("held-out score by task")
        for index, task in enumerate(tasks):
            row = evaluation[task]
            bars.text(0.01, index, f"{row['metric']} {row['score']:.2f}", va="center")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smoothed(values: Sequence[float], weight: float = 0.9) -> list[float]:
    smoothed, current = [], values[0]
    for value in values:
        current = weight * current + (1 - weight) * value
        smoothed.append(current)
    return smoothed


def box_gallery(predictions: Sequence[Any], out: Path, *, columns: int = 4, scale: int = 4) -> Path:
    """Held-out images with the reference box (green) and the predicted one (red), captioned
    with the question's subject and the IoU."""
    from sphinx_mllm.pipeline.drawing import find_boxes

    tiles = []
    for prediction in predictions:
        with Image.open(prediction.images[0]) as opened:
            image = opened.convert("RGB")
        size = image.size
        image = image.resize((size[0] * scale, size[1] * scale), Image.NEAREST)
        draw = ImageDraw.Draw(image)
        for colour, text in (("lime", prediction.reference), ("red", prediction.prediction)):
            for found in find_boxes(text, size):
                x0, y0, x1, y1 = (value * scale for value in found.box)
                draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        caption = f"IoU {prediction.extra.get('iou', 0.0):.2f}"
        draw.text((3, 3), caption, fill="white", stroke_width=2, stroke_fill="black")
        tiles.append(image)
    if not tiles:
        raise ValueError("No predictions to draw")
    width = max(tile.width for tile in tiles)
    height = max(tile.height for tile in tiles)
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (width * min(columns, len(tiles)), height * rows), "white")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % columns) * width, (index // columns) * height))
    sheet.save(out)
    return out
