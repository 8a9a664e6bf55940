"""Grounded pretraining of the visual stack: teach the encoders what lies where before the LLM
sees them, from detection boxes (a COCO instances file).

SPHINX starts from encoders pretrained on hundreds of millions of images and keeps them frozen.
A model whose encoders start from random weights (the demo, or a user's own small encoder) has no
such start, and language-model training alone teaches them little: the answer tokens reward the
easiest cue (colour) and erode the rest. This stage gives the encoders that start on the task's
own images: a linear head reads the global view's grid token under each object's centre
(`VisualStack.grid_tokens_at`) and is trained, with the whole visual stack, to name the object's
category. The head is then dropped; training the MLLM with the encoders frozen (stage
`finetune`) keeps what they learned.

Two options make the supervision denser: `dense` names what lies under every grid cell (the
object whose box holds the cell's centre, the smallest if several, else a background class; the
cell under each object's centre is always that object's), and `box_weight` adds an L1 loss on
each object's box (corners in the padded-square frame of SPHINX's box text, in [0, 1]) predicted
from every token the object covers, so the tokens learn where the object's edges are.

`supercategory_weight` adds a third head that names each object's COCO supercategory (for the
demo's objects, their shape: "purple triangle" is a "triangle"). A category head alone may give
every category its own direction; a head shared by all the categories of a supercategory makes
the tokens carry it along one direction whatever the category, which an LLM can then attend to
("what colour is the triangle?").

    RUN/grounding.jsonl   one line per step: loss and the accuracy of the step's batch
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, StrictBool, StrictInt, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError
from torch import nn

from sphinx_mllm.data.readers.coco import CocoFile, CocoObject
from sphinx_mllm.pipeline.config import CONFIG, Number, config_errors


@config_errors(label="grounding")
@pydantic_dataclass(config=CONFIG)
class GroundingConfig:
    """Where the boxes are and how long to train. `eval_instances` (optional) is a held-out
    instances file whose objects are scored after training. Checked when made (a `ConfigError`
    names the field)."""

    instances: Path
    images: Path
    steps: StrictInt = 300
    batch_size: StrictInt = 32
    lr: Annotated[Number, Field(gt=0)] = 1e-3
    eval_instances: Path | None = None
    eval_images: Path | None = None
    dense: StrictBool = False
    box_weight: Annotated[Number, Field(ge=0)] = 0.0
    supercategory_weight: Annotated[Number, Field(ge=0)] = 0.0

    @field_validator("steps", "batch_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            message = "must be a positive int, got {got}"
            raise PydanticCustomError("positive_int", message, {"got": value})
        return value

    @field_validator("eval_instances", "eval_images", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return value or None


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class GroundedImage:
    """One image and its supervised tokens: each token's class index (the background class
    past the categories) and the box of the object it belongs to (None for background)."""

    path: Path
    tokens: tuple[int, ...]
    labels: tuple[int, ...]
    boxes: tuple[Box | None, ...]
    objects: int


@dataclass
class GroundingResult:
    steps: int
    seconds: float
    final_loss: float
    train_accuracy: float  # over the last 10% of steps (at least one)
    held_out_accuracy: float | None
    objects: int
    tokens: int  # supervised tokens: one per object, or every grid token with `dense`
    classes: int

    def summary(self) -> str:
        held_out = (
            f", held-out objects {self.held_out_accuracy:.3f}"
            if self.held_out_accuracy is not None
            else ""
        )
        return (
            f"grounded visual pretraining: {self.steps} steps in {self.seconds:.0f} s on "
            f"{self.objects:,} objects of {self.classes} categories ({self.tokens:,} tokens); "
            f"final loss {self.final_loss:.3f}, category accuracy: last steps "
            f"{self.train_accuracy:.3f}{held_out}"
        )


def grounded_images(
    model: Any,
    instances: Path,
    images: Path,
    classes: dict[int, int] | None = None,
    *,
    dense: bool = False,
) -> tuple[list[GroundedImage], dict[int, int]]:
    """The images of a COCO instances file with at least one object, with their supervised
    tokens: the token under each object's centre, or with `dense` every grid token (see the
    module docstring). `classes` maps category ids to class indices (made from the file's
    categories, in id order, when not given); the background class is `len(classes)`."""
    coco = CocoFile(instances)  # a bad record raises, naming the file and the record
    if classes is None:
        classes = {category: index for index, category in enumerate(sorted(coco.categories))}
    grounded = []
    for image_id, objects in sorted(coco.objects_by_image().items()):
        objects = [o for o in objects if not o.iscrowd and o.category_id in classes]
        if not objects:
            continue
        image = coco.images[image_id]
        path = images / image.file_name
        grounded.append(_ground(model.visual, image.size, path, objects, classes, dense))
    if not grounded:
        raise ValueError(f"{instances}: no image has an annotated object to ground")
    return grounded, classes


def supercategory_map(instances: Path, classes: dict[int, int]) -> tuple[torch.Tensor, list[str]]:
    """For each class index (background last), the index of its category's supercategory
    (background last); and the supercategory names, sorted."""
    categories = CocoFile(instances).categories
    missing = sorted(c for c in classes if not categories.get(c, {}).get("supercategory"))
    if missing:
        raise ValueError(
            f"{instances}: categories {missing} have no supercategory (needed by grounding "
            "supercategory_weight)"
        )
    names = sorted({str(categories[c]["supercategory"]) for c in classes})
    index = {name: i for i, name in enumerate(names)}
    parents = [0] * (len(classes) + 1)
    for category, label in classes.items():
        parents[label] = index[str(categories[category]["supercategory"])]
    parents[len(classes)] = len(names)
    return torch.tensor(parents), names


def _ground(
    visual: Any,
    size: tuple[int, int],
    path: Path,
    objects: list[CocoObject],
    classes: dict[int, int],
    dense: bool,
) -> GroundedImage:
    layout = visual.layout(size)
    canvas_w, canvas_h = layout.canvas_size
    frame = []  # each object's box in the padded square, in [0, 1]
    for item in objects:
        x0, y0, x1, y1 = layout.image_to_canvas(item.xyxy)
        frame.append((x0 / canvas_w, y0 / canvas_h, x1 / canvas_w, y1 / canvas_h))
    # smallest last, so that it keeps a cell it shares with a larger object
    by_area = sorted(range(len(objects)), key=lambda i: -objects[i].bbox[2] * objects[i].bbox[3])
    owner: dict[int, int] = {}  # token -> the object it is labelled with (-1: background)
    if dense:  # (a mixer with several grid parts is refused by `grid_tokens_at` below)
        table = next(iter(visual.mixer.grid_cells("global").values()))
        rows, cols = table.shape
        cell_w, cell_h = canvas_w / cols, canvas_h / rows
        for r, row_tokens in enumerate(table.tolist()):
            for c, token in enumerate(row_tokens):
                x, y, _, _ = layout.canvas_to_image(((c + 0.5) * cell_w, (r + 0.5) * cell_h) * 2)
                inside = [i for i in by_area if _holds(objects[i].xyxy, x, y)]
                owner[token] = inside[-1] if inside else -1
    centres = [(x + w / 2, y + h / 2) for x, y, w, h in (objects[i].bbox for i in by_area)]
    for index, token in zip(by_area, visual.grid_tokens_at(size, centres).tolist(), strict=True):
        owner[token] = index  # the cell under an object's centre is always that object's
    tokens = sorted(owner)
    labels = [
        classes[objects[owner[t]].category_id] if owner[t] >= 0 else len(classes) for t in tokens
    ]
    boxes = [frame[owner[t]] if owner[t] >= 0 else None for t in tokens]
    return GroundedImage(path, tuple(tokens), tuple(labels), tuple(boxes), len(objects))


def _holds(box: Box, x: float, y: float) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


class GroundingHead(nn.Module):
    """Linear heads over the visual tokens at given positions: class logits (the categories and
    background), a box (sigmoid corners) and, given `supercategories`, their logits (and
    background; None without)."""

    def __init__(self, width: int, classes: int, supercategories: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(width, classes + 1)
        self.box = nn.Linear(width, 4)
        self.parent = nn.Linear(width, supercategories + 1) if supercategories else None

    def forward(
        self, tokens: torch.Tensor, batch: list[GroundedImage]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = torch.tensor([i for i, item in enumerate(batch) for _ in item.tokens])
        columns = torch.tensor([token for item in batch for token in item.tokens])
        picked = tokens[rows.to(tokens.device), columns.to(tokens.device)].float()
        parents = self.parent(picked) if self.parent is not None else None
        return self.linear(picked), self.box(picked).sigmoid(), parents


def _targets(batch: list[GroundedImage], device: torch.device):
    """Class labels of every supervised token; box targets and which tokens have one."""
    labels = torch.tensor([label for item in batch for label in item.labels], device=device)
    boxes = [box for item in batch for box in item.boxes]
    has_box = torch.tensor([box is not None for box in boxes], device=device)
    corners = torch.tensor([box or (0.0,) * 4 for box in boxes], device=device)
    return labels, corners, has_box


def pretrain_visual_grounding(
    model: Any,
    config: GroundingConfig,
    *,
    seed: int = 0,
    log_file: Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, float, float], None] | None = None,
) -> GroundingResult:
    """Train `model.visual` (encoders and mixer) with a linear head to name the category of the
    object under each grid token; leaves the visual stack in train mode with its encoders
    trainable (the MLLM stage freezes them as it chooses)."""
    started = time.perf_counter()
    items, classes = grounded_images(model, config.instances, config.images, dense=config.dense)
    visual = model.visual
    device = next(visual.parameters()).device
    parents, supercategories = None, []
    if config.supercategory_weight:
        parents, supercategories = supercategory_map(config.instances, classes)
        parents = parents.to(device)
    for encoder in visual.encoders.values():
        encoder.unfreeze()
    visual.train()
    visual.requires_grad_(True)
    head = GroundingHead(visual.out_dim, len(classes), len(supercategories)).to(device)
    optimizer = torch.optim.Adam([*visual.parameters(), *head.parameters()], lr=config.lr)
    order = random.Random(seed)
    bar = _progress_bar(config.steps) if progress else None
    losses, accuracies = [], []
    log = log_file.open("w") if log_file is not None else None
    try:
        for step in range(1, config.steps + 1):
            batch = [items[order.randrange(len(items))] for _ in range(config.batch_size)]
            logits, predicted, parent_logits = head(_encode(model, batch, device), batch)
            labels, corners, has_box = _targets(batch, device)
            loss = F.cross_entropy(logits, labels)
            if parents is not None:
                parent_loss = F.cross_entropy(parent_logits, parents[labels])
                loss = loss + config.supercategory_weight * parent_loss
            if config.box_weight:
                box_error = F.l1_loss(predicted[has_box], corners[has_box])
                loss = loss + config.box_weight * box_error
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"grounded visual pretraining: the loss is {loss.item()} at step {step}; "
                    "lower its lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            accuracy = _object_accuracy(logits, labels, has_box)
            losses.append(loss.item())
            accuracies.append(accuracy)
            if log is not None:
                log.write(json.dumps({"step": step, "loss": losses[-1], "accuracy": accuracy}))
                log.write("\n")
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{accuracy:.2f}", refresh=False)
                bar.update()
            if on_step is not None:
                on_step(step, losses[-1], accuracy)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        optimizer.zero_grad(set_to_none=True)
    held_out = None
    if config.eval_instances is not None:
        held_out = grounding_accuracy(
            model, head, config.eval_instances, config.eval_images or config.images, classes
        )
    tail = max(1, config.steps // 10)
    return GroundingResult(
        steps=config.steps,
        seconds=time.perf_counter() - started,
        final_loss=sum(losses[-tail:]) / tail,
        train_accuracy=sum(accuracies[-tail:]) / tail,
        held_out_accuracy=held_out,
        objects=sum(item.objects for item in items),
        tokens=sum(len(item.tokens) for item in items),
        classes=len(classes),
    )


def _object_accuracy(logits: torch.Tensor, labels: torch.Tensor, has_box: torch.Tensor) -> float:
    """How many of the tokens on an object are given its category."""
    return (logits.argmax(-1) == labels)[has_box].float().mean().item()


@torch.no_grad()
def grounding_accuracy(
    model: Any, head: GroundingHead, instances: Path, images: Path, classes: dict[int, int]
) -> float:
    """The head's category accuracy on the objects of another instances file (the token under
    each object's centre)."""
    items, _ = grounded_images(model, instances, images, classes)
    visual = model.visual
    was_training = visual.training
    visual.eval()
    device = next(visual.parameters()).device
    correct = total = 0
    for start in range(0, len(items), 64):
        batch = items[start : start + 64]
        logits, _, _ = head(_encode(model, batch, device), batch)
        labels, _, _ = _targets(batch, device)
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    visual.train(was_training)
    return correct / total


def _encode(model: Any, batch: list[GroundedImage], device: torch.device) -> torch.Tensor:
    views = []
    for item in batch:
        if not item.path.is_file():
            raise FileNotFoundError(f"grounded visual pretraining: no image at {item.path}")
        with Image.open(item.path) as image:
            views.append(model.visual.preprocess(image.convert("RGB"))[0].to(device))
    return model.visual(views).tokens


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ground", unit="step")
