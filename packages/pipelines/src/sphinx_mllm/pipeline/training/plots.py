"""PNG figures of a run: the training curve (loss and learning rate by step, with evaluation
scores when there are some) and held-out images with the boxes the model predicted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


def plot_training_curve(
    metrics_file: Path, out: Path, evaluation: dict[str, dict[str, Any]] | None = None
) -> Path:
    """Loss (raw and smoothed) and learning rate against step; per-task scores as a bar panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{metrics_file} holds no step to plot")
    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    panels = 3 if evaluation else 2
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
    if evaluation:
        tasks = list(evaluation)
        axes[2].barh(tasks, [evaluation[task]["score"] for task in tasks], color="C2")
        axes[2].set_xlim(0, 1)
        axes[2].set_title("held-out score by task")
        for index, task in enumerate(tasks):
            row = evaluation[task]
            axes[2].text(0.01, index, f"{row['metric']} {row['score']:.2f}", va="center")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


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
        with Image.open(prediction.image) as opened:
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
