"""Writing a synthetic dataset to disk in the public formats, so the readers and task builders
that read COCO, PubLayNet and VQAv2 read it unchanged.

    images/{train,val}/{image_id:012d}.png     (COCO 2017's naming, with .png)
    instances_{split}.json                      COCO instances of the shape scenes
    captions_{split}.json                       COCO captions of the shape scenes
    person_keypoints_{split}.json               COCO person keypoints of the stick figures
    layout_{split}.json                         PubLayNet-style layout of the pages
    vqa_questions_{split}.json                  VQAv2 questions about the shape scenes
    vqa_annotations_{split}.json                VQAv2 annotations (ten agreeing answers)
    manifest.json                               seed, settings, counts, files and their sha256

The same arguments give byte-identical files. The dataset is built in a hidden sibling folder
and renamed into place, so a crash never leaves a folder that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sphinx_mllm.data.synthetic import coco
from sphinx_mllm.data.synthetic.captions import caption_scene
from sphinx_mllm.data.synthetic.figures import make_stick_figure
from sphinx_mllm.data.synthetic.pages import make_page
from sphinx_mllm.data.synthetic.questions import make_questions
from sphinx_mllm.data.synthetic.shapes import make_shape_scene
from sphinx_mllm.data.synthetic.streams import KINDS, MAX_ITEMS, SPLITS, image_id, item_rng

GENERATOR = "sphinx_mllm.data.synthetic"
FORMAT_VERSION = 1
IMAGE_FILE_PATTERN = "{image_id:012d}.png"
_DUPLICATE_RETRIES = 10


def _json_bytes(content: Any, indent: int | None = None) -> bytes:
    separators = None if indent else (",", ":")
    return (json.dumps(content, indent=indent, separators=separators) + "\n").encode("ascii")


class _SplitWriter:
    """Makes one split's items, writes their images, and gathers their annotation records."""

    def __init__(self, root: Path, split: str, seed: int, settings: dict, seen: set[bytes]):
        self.split, self.seed, self.settings = split, seed, settings
        self.images_dir = root / "images" / split
        self.images_dir.mkdir(parents=True)
        self.seen = seen  # digests of every image so far: no image repeats, in or across splits
        self.records: defaultdict[str, list] = defaultdict(list)

    def _unique(
        self, kind: str, index: int, make: Callable[[np.random.Generator], Any]
    ) -> tuple[Any, np.random.Generator]:
        """The item, or a redrawn one when its pixels repeat an earlier image (vanishingly rare,
        but it keeps the held-out split disjoint by construction, not by luck)."""
        for attempt in range(_DUPLICATE_RETRIES):
            rng = item_rng(self.seed, self.split, kind, index, attempt)
            item = make(rng)
            digest = hashlib.sha256(item.image.tobytes()).digest()
            if digest not in self.seen:
                self.seen.add(digest)
                return item, rng
        raise RuntimeError(f"{self.split} {kind} item {index} repeats after {attempt + 1} draws")

    def _save(self, kind: str, index: int, image: np.ndarray) -> dict[str, Any]:
        identifier = image_id(self.split, kind, index)
        file_name = IMAGE_FILE_PATTERN.format(image_id=identifier)
        Image.fromarray(image).save(self.images_dir / file_name, format="PNG")
        return coco.image_record(identifier, file_name, (image.shape[1], image.shape[0]))

    def add_shape_scene(self, index: int) -> None:
        s = self.settings
        scene, rng = self._unique(
            "shapes",
            index,
            lambda r: make_shape_scene(r, s["shape_size"], max_objects=s["max_objects"]),
        )
        record = self._save("shapes", index, scene.image)
        self.records["shape_images"].append(record)
        self.records["objects"] += coco.shape_annotations(scene, record["id"])
        self.records["captions"].append(coco.caption_annotation(caption_scene(scene), record["id"]))
        asked, answered = coco.vqa_records(
            make_questions(scene, rng, s["questions_per_scene"]), record["id"]
        )
        self.records["questions"] += asked
        self.records["answers"] += answered

    def add_figure(self, index: int) -> None:
        figure, _ = self._unique(
            "figures", index, lambda r: make_stick_figure(r, self.settings["figure_size"])
        )
        record = self._save("figures", index, figure.image)
        self.records["figure_images"].append(record)
        self.records["people"].append(coco.keypoint_annotation(figure, record["id"]))

    def add_page(self, index: int) -> None:
        page, _ = self._unique("pages", index, lambda r: make_page(r, *self.settings["page_size"]))
        record = self._save("pages", index, page.image)
        self.records["page_images"].append(record)
        self.records["blocks"] += coco.layout_annotations(page, record["id"])

    def files(self) -> dict[str, dict[str, Any]]:
        """Role (instances, captions, ...) -> content of this split's annotation files."""
        r = self.records
        questions, answers = coco.vqa_files(self.split, r["questions"], r["answers"])
        return {
            "instances": coco.coco_file(
                "SPHINX synthetic shapes", r["shape_images"], r["objects"], coco.SHAPE_CATEGORIES
            ),
            "captions": coco.coco_file(
                "SPHINX synthetic shape captions", r["shape_images"], r["captions"], []
            ),
            "person_keypoints": coco.coco_file(
                "SPHINX synthetic stick figures",
                r["figure_images"],
                r["people"],
                [coco.PERSON_CATEGORY],
            ),
            "layout": coco.coco_file(
                "SPHINX synthetic pages", r["page_images"], r["blocks"], coco.LAYOUT_CATEGORY_LIST
            ),
            "vqa_questions": questions,
            "vqa_annotations": answers,
        }

    def counts(self) -> dict[str, int]:
        r = self.records
        return {
            "shape_scenes": len(r["shape_images"]),
            "objects": len(r["objects"]),
            "figures": len(r["figure_images"]),
            "pages": len(r["page_images"]),
            "layout_blocks": len(r["blocks"]),
            "questions": len(r["questions"]),
        }


def _check_arguments(seed: int, counts: dict[str, int], settings: dict[str, Any]) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, count in counts.items():
        if not isinstance(count, int) or not 0 <= count <= MAX_ITEMS:
            raise ValueError(f"num_{name} must be in 0..{MAX_ITEMS}, got {count}")
    if settings["questions_per_scene"] < 1:
        raise ValueError(
            f"questions_per_scene must be at least 1, got {settings['questions_per_scene']}"
        )
    if len(settings["page_size"]) != 2:
        raise ValueError(f"page_size is (width, height), got {settings['page_size']!r}")


def _build(root: Path, seed: int, counts: dict[str, int], settings: dict[str, Any]) -> dict:
    """Write every file under `root` (a fresh folder) and return the manifest."""
    seen: set[bytes] = set()
    splits, digests = {}, {}
    for split in SPLITS:
        writer = _SplitWriter(root, split, seed, settings, seen)
        for index in range(counts[split]):
            writer.add_shape_scene(index)
            writer.add_figure(index)
            writer.add_page(index)
        names = {}
        for role, content in writer.files().items():
            names[role] = f"{role}_{split}.json"
            data = _json_bytes(content)
            (root / names[role]).write_bytes(data)
            digests[names[role]] = hashlib.sha256(data).hexdigest()
        splits[split] = {"images": f"images/{split}", "counts": writer.counts(), "files": names}
    manifest = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "settings": settings,
        "image_file_pattern": IMAGE_FILE_PATTERN,
        "image_kinds": list(KINDS),
        "splits": splits,
        "sha256": digests,
    }
    (root / "manifest.json").write_bytes(_json_bytes(manifest, indent=2))
    return manifest


def _is_synthetic_dataset(path: Path) -> bool:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    seed: int,
    num_train: int,
    num_val: int,
    shape_size: int = 64,
    figure_size: int = 96,
    page_size: tuple[int, int] = (96, 128),
    max_objects: int = 5,
    questions_per_scene: int = 4,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `num_train` and `num_val` items of each kind (shape scene, stick figure, page) and
    their annotation files to `out_dir`; return the manifest (also written as manifest.json).

    `overwrite` replaces an earlier synthetic dataset at `out_dir`; any other non-empty folder
    there is refused.
    """
    out_dir = Path(out_dir)
    counts = {"train": num_train, "val": num_val}
    settings = {
        "shape_size": shape_size,
        "figure_size": figure_size,
        "page_size": list(page_size),
        "max_objects": max_objects,
        "questions_per_scene": questions_per_scene,
    }
    _check_arguments(seed, counts, settings)
    occupied = out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir()))
    if occupied and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace it")
    if occupied and not _is_synthetic_dataset(out_dir):
        raise FileExistsError(
            f"{out_dir} holds no manifest.json of a synthetic dataset; refusing to replace it"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the folder (renamed into place) gets the umask's
    # permissions, not mkdtemp's private 0o700, so teammates can read the data
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(staging, 0o777)
    try:
        manifest = _build(staging, seed, counts, settings)
        if out_dir.exists():
            retired = staging.with_name(staging.name + ".old")
            os.replace(out_dir, retired)
            os.replace(staging, out_dir)
            shutil.rmtree(retired)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
