"""Synthetic source data: deterministic from its seed, annotations that match the drawn pixels,
files in the public formats that the package's own readers accept, and disjoint splits."""

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sphinx_mllm.data.readers import CocoFile, layout_category_names, read_vqav2
from sphinx_mllm.data.synthetic import (
    COLOURS,
    KEYPOINT_NAMES,
    LAYOUT_CATEGORIES,
    SHAPES,
    ShapeObject,
    ShapeScene,
    caption_scene,
    item_rng,
    make_page,
    make_questions,
    make_shape_scene,
    make_stick_figure,
    write_synthetic_dataset,
)
from sphinx_mllm.data.synthetic.backgrounds import BACKGROUND_KINDS, paint_background
from sphinx_mllm.data.synthetic.colours import contrasting
from sphinx_mllm.data.synthetic.shapes import GAP, PLURALS

SEED, NUM_TRAIN, NUM_VAL = 7, 40, 15
SPLITS = ("train", "val")
PALETTE = np.array(list(COLOURS.values()))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    write_synthetic_dataset(root, seed=SEED, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root


def load(root: Path, name: str) -> dict:
    return json.loads((root / name).read_text())


def pixels(root: Path, split: str, file_name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / split / file_name).convert("RGB"))


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def box_inside(box, width: int, height: int) -> bool:
    x, y, w, h = box
    return min(x, y) >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height


def is_colour(image: np.ndarray, rgb) -> np.ndarray:
    return np.all(image == np.asarray(rgb, dtype=np.uint8), axis=-1)


def is_palette(image: np.ndarray) -> np.ndarray:
    return np.any(np.all(image[..., None, :] == PALETTE, axis=-1), axis=-1)


# --- determinism, splits, counts ---------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs(dataset, tmp_path):
    write_synthetic_dataset(tmp_path / "again", seed=SEED, num_train=NUM_TRAIN, num_val=NUM_VAL)
    assert tree(tmp_path / "again") == tree(dataset)
    write_synthetic_dataset(tmp_path / "other", seed=SEED + 1, num_train=NUM_TRAIN, num_val=NUM_VAL)
    other, first = tree(tmp_path / "other"), tree(dataset)
    assert other.keys() == first.keys()  # same ids and file names, different content
    changed = [n for n in first if n != "manifest.json"]  # the manifest differs in its seed
    assert all(other[n] != first[n] for n in changed)


def test_an_item_does_not_depend_on_how_many_were_made(dataset, tmp_path):
    write_synthetic_dataset(tmp_path / "small", seed=SEED, num_train=3, num_val=NUM_VAL)
    small, full = tree(tmp_path / "small"), tree(dataset)
    for name, content in small.items():
        if name.startswith("images/") or name.endswith("_val.json"):
            assert content == full[name], name
    assert len([n for n in small if n.startswith("images/train/")]) == 3 * 3


def test_splits_are_disjoint_in_ids_and_pixels(dataset):
    ids, digests = {}, {}
    for split in SPLITS:
        images = [
            image
            for kind in ("instances", "person_keypoints", "layout")
            for image in load(dataset, f"{kind}_{split}.json")["images"]
        ]
        ids[split] = {image["id"] for image in images}
        assert len(ids[split]) == len(images)
        digests[split] = {
            hashlib.sha256(pixels(dataset, split, image["file_name"]).tobytes()).digest()
            for image in images
        }
        assert len(digests[split]) == len(images)  # no image repeats inside a split either
    assert not ids["train"] & ids["val"]
    assert not digests["train"] & digests["val"]


def test_counts_in_the_manifest_match_the_files(dataset):
    manifest = load(dataset, "manifest.json")
    assert manifest["seed"] == SEED
    for split, number in zip(SPLITS, (NUM_TRAIN, NUM_VAL), strict=True):
        entry = manifest["splits"][split]
        counts, files = entry["counts"], entry["files"]
        instances = load(dataset, files["instances"])
        assert counts["shape_scenes"] == len(instances["images"]) == number
        assert counts["objects"] == len(instances["annotations"])
        assert (
            counts["figures"] == len(load(dataset, files["person_keypoints"])["images"]) == number
        )
        layout = load(dataset, files["layout"])
        assert counts["pages"] == len(layout["images"]) == number
        assert counts["layout_blocks"] == len(layout["annotations"])
        questions = load(dataset, files["vqa_questions"])["questions"]
        assert counts["questions"] == len(questions) == 4 * number
        assert len(list((dataset / entry["images"]).iterdir())) == 3 * number
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((dataset / name).read_bytes()).hexdigest() == digest


# --- the public formats ------------------------------------------------------------------------


def test_files_follow_the_public_formats(dataset):
    for split in SPLITS:
        for kind in ("instances", "captions", "person_keypoints", "layout"):
            content = load(dataset, f"{kind}_{split}.json")
            assert {"images", "annotations", "categories"} <= content.keys()
            for image in content["images"]:
                assert {"id", "file_name", "width", "height"} <= image.keys()
                assert (dataset / "images" / split / image["file_name"]).is_file()
            for item in content["annotations"]:
                if kind == "captions":
                    assert {"id", "image_id", "caption"} <= item.keys()
                    continue
                assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} <= item.keys()
                assert item["iscrowd"] == 0 and len(item["bbox"]) == 4
                polygon = item["segmentation"][0]
                assert len(polygon) >= 6 and len(polygon) % 2 == 0
        person = load(dataset, f"person_keypoints_{split}.json")["categories"]
        assert person[0]["name"] == "person" and person[0]["keypoints"] == list(KEYPOINT_NAMES)
        assert len(person[0]["skeleton"]) == 19
        assert all(1 <= k <= 17 for pair in person[0]["skeleton"] for k in pair)
        layout = load(dataset, f"layout_{split}.json")["categories"]
        assert [(c["id"], c["name"]) for c in layout] == list(enumerate(LAYOUT_CATEGORIES, 1))
        shapes = load(dataset, f"instances_{split}.json")["categories"]
        assert len(shapes) == len(COLOURS) * len(SHAPES) == len({c["id"] for c in shapes})
        assert all(c["name"] == f"{c['colour']} {c['shape']}" for c in shapes)
        questions = load(dataset, f"vqa_questions_{split}.json")["questions"]
        answers = load(dataset, f"vqa_annotations_{split}.json")["annotations"]
        assert all({"image_id", "question", "question_id"} <= q.keys() for q in questions)
        for item in answers:
            assert item["answer_type"] in ("yes/no", "number", "other")
            assert len(item["answers"]) == 10
            assert {a["answer"] for a in item["answers"]} == {item["multiple_choice_answer"]}
            assert [a["answer_id"] for a in item["answers"]] == list(range(1, 11))


def test_the_package_readers_read_it(dataset):
    for split in SPLITS:
        instances = CocoFile(dataset / f"instances_{split}.json")  # raises on any bad record
        assert sum(len(v) for v in instances.objects_by_image().values()) > NUM_TRAIN // 2
        captions = list(CocoFile(dataset / f"captions_{split}.json").captions())
        assert len(captions) == len(instances.images)
        people = CocoFile(dataset / f"person_keypoints_{split}.json")
        assert people.keypoint_names() == list(KEYPOINT_NAMES)
        assert all(len(o.keypoints) == 51 for o in people.objects())
        layout = CocoFile(dataset / f"layout_{split}.json")
        assert set(layout_category_names(layout).values()) == set(LAYOUT_CATEGORIES)
        assert len(list(layout.objects())) > len(layout.images)
        read = list(
            read_vqav2(
                dataset / f"vqa_questions_{split}.json",
                dataset / f"vqa_annotations_{split}.json",
                image_pattern="{image_id:012d}.png",
            )
        )
        assert len(read) == 4 * len(instances.images)
        assert {q.image for q in read} == {i.file_name for i in instances.images.values()}


# --- annotations match the pixels --------------------------------------------------------------


def test_shape_boxes_are_exact_and_their_colour_dominates(dataset):
    for split in SPLITS:
        content = load(dataset, f"instances_{split}.json")
        categories = {c["id"]: c for c in content["categories"]}
        images = {image["id"]: image for image in content["images"]}
        for item in content["annotations"]:
            image = images[item["image_id"]]
            drawn = pixels(dataset, split, image["file_name"])
            x, y, w, h = item["bbox"]
            assert box_inside(item["bbox"], image["width"], image["height"])
            ours = is_colour(drawn, COLOURS[categories[item["category_id"]]["colour"]])
            inside = ours[y : y + h, x : x + w]
            assert inside.sum() == item["area"] >= 0.3 * w * h  # the object, and only it
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )
            ring = ours[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1]
            assert ring.sum() == inside.sum()  # nothing of its colour just outside: tight box


@pytest.mark.parametrize("seed", range(3))
def test_shape_scenes_vary_and_keep_objects_apart(seed):
    scenes = [make_shape_scene(item_rng(seed, "train", "shapes", i, 0), 96) for i in range(150)]
    objects = [item for scene in scenes for item in scene.objects]
    assert {item.shape for item in objects} == set(SHAPES)
    assert {item.colour for item in objects} == set(COLOURS)
    assert {scene.background for scene in scenes} == set(BACKGROUND_KINDS)
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3, 4, 5}
    for scene in scenes:
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                ax, ay, aw, ah = a.bbox
                bx, by, bw, bh = b.bbox
                assert (
                    ax + aw + GAP <= bx
                    or bx + bw + GAP <= ax
                    or ay + ah + GAP <= by
                    or by + bh + GAP <= ay
                )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(32, 128))
def test_backgrounds_never_use_an_object_colour(seed, size):
    rng = np.random.default_rng(seed)
    for kind in BACKGROUND_KINDS:
        image, _ = paint_background(rng, size, size + 3, kind)
        assert image.shape == (size + 3, size, 3)
        assert not is_palette(image).any()


@pytest.mark.parametrize("size", [96, 32, 160])
def test_keypoints_are_labelled_inside_the_image_and_on_the_figure(size):
    seen = Counter()
    for i in range(120):
        figure = make_stick_figure(item_rng(1, "train", "figures", i, 0), size)
        x0, y0, w, h = figure.bbox
        assert box_inside(figure.bbox, size, size)
        body = is_colour(figure.image, COLOURS[figure.colour])
        assert not body[:y0].any() and not body[y0 + h :].any()
        assert not body[:, :x0].any() and not body[:, x0 + w :].any()
        on_figure = body | is_colour(figure.image, contrasting(COLOURS[figure.colour]))
        triples = np.array(figure.keypoints).reshape(17, 3)
        assert figure.num_keypoints == int((triples[:, 2] > 0).sum()) >= 3
        for x, y, v in triples:
            seen[v] += 1
            if v == 0:
                assert x == y == 0
                continue
            assert x0 <= x < x0 + w and y0 <= y < y0 + h
            assert on_figure[y, x] == (v == 2)  # occluded points lie under the occluder
        left, right = (KEYPOINT_NAMES.index(f"{s}_shoulder") for s in ("left", "right"))
        if triples[left, 2] and triples[right, 2]:
            assert triples[left, 0] > triples[right, 0]  # the person's left, image right
    assert seen[0] and seen[1] and seen[2] > 2 * (seen[0] + seen[1])


@pytest.mark.parametrize(("width", "height"), [(96, 128), (64, 64), (200, 260), (160, 90)])
def test_layout_blocks_cover_all_ink_and_are_tight(width, height):
    found = Counter()
    for i in range(60):
        page = make_page(item_rng(2, "val", "pages", i, 0), width, height)
        ink = ~is_colour(page.image, page.paper)
        covered = np.zeros_like(ink)
        assert page.blocks[0].category == "title"
        for block in page.blocks:
            found[block.category] += 1
            x, y, w, h = block.bbox
            assert box_inside(block.bbox, width, height)
            assert not covered[y : y + h, x : x + w].any()  # blocks never overlap
            covered[y : y + h, x : x + w] = True
            inside = ink[y : y + h, x : x + w]
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )
        assert not (ink & ~covered).any()
    if height >= 128:  # tall enough for every kind of block
        assert set(found) == set(LAYOUT_CATEGORIES)


# --- captions and questions --------------------------------------------------------------------


def scene_of(*objects: tuple[str, str]) -> ShapeScene:
    items = [ShapeObject(c, s, (0, 0, 1, 1), 1, ()) for c, s in objects]
    return ShapeScene(np.zeros((64, 64, 3), np.uint8), tuple(items), "plain")


def test_captions_count_each_kind_of_object():
    two_and_one = scene_of(("red", "circle"), ("blue", "square"), ("red", "circle"))
    assert caption_scene(two_and_one) == "two red circles and a blue square"
    assert caption_scene(scene_of(("orange", "star"))) == "an orange star"
    three = scene_of(("white", "cross"), ("black", "cross"), ("green", "triangle"))
    assert caption_scene(three) == "a white cross, a black cross and a green triangle"


def expected_answer(question: str, objects: list[tuple[str, str]]) -> str:
    """The answer recomputed from the scene's objects alone; fails on any ambiguity."""
    colours = [c for c, _ in objects]
    shapes = [s for _, s in objects]
    singular = {plural: shape for shape, plural in PLURALS.items()}
    if match := re.fullmatch(r"What color is the (\w+)\?", question):
        (answer,) = [c for c, s in objects if s == match[1]]
        return answer
    if match := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (answer,) = [s for c, s in objects if c == match[1]]
        return answer
    if match := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(colours.count(match[1]))
    if question == "How many objects are there?":
        return str(len(objects))
    if match := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(shapes.count(singular[match[1]]))
    match = re.fullmatch(r"Is there (a|an) (\w+) (\w+)\?", question)
    assert match and match[1] == ("an" if match[2][0] in "aeiou" else "a"), question
    return "yes" if (match[2], match[3]) in objects else "no"


def test_vqa_answers_follow_from_the_scene(dataset):
    answer_types = Counter()
    for split in SPLITS:
        instances = load(dataset, f"instances_{split}.json")
        names = {c["id"]: (c["colour"], c["shape"]) for c in instances["categories"]}
        objects = {image["id"]: [] for image in instances["images"]}
        for item in instances["annotations"]:
            objects[item["image_id"]].append(names[item["category_id"]])
        questions = load(dataset, f"vqa_questions_{split}.json")["questions"]
        answers = {
            a["question_id"]: a
            for a in load(dataset, f"vqa_annotations_{split}.json")["annotations"]
        }
        assert len(answers) == len(questions) == len({q["question_id"] for q in questions})
        for question in questions:
            answer = answers[question["question_id"]]
            assert answer["image_id"] == question["image_id"]
            target = answer["multiple_choice_answer"]
            assert target == expected_answer(question["question"], objects[question["image_id"]])
            kind = (
                "yes/no" if target in ("yes", "no") else "number" if target.isdigit() else "other"
            )
            assert answer["answer_type"] == kind
            answer_types[(kind, target if kind == "yes/no" else "")] += 1
    assert answer_types[("yes/no", "yes")] and answer_types[("yes/no", "no")]
    assert answer_types[("number", "")] and answer_types[("other", "")]


def test_questions_are_distinct_and_capped():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = make_shape_scene(rng, 64)
        questions = make_questions(scene, rng, max_questions=9)
        assert 4 <= len(questions) <= 9
        assert len({q.question for q in questions}) == len(questions)


# --- the writer's guards -----------------------------------------------------------------------


def test_refuses_to_replace_what_it_did_not_write(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_dataset(target, seed=0, num_train=1, num_val=1)
    with pytest.raises(FileExistsError, match=r"no manifest\.json"):
        write_synthetic_dataset(target, seed=0, num_train=1, num_val=1, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"
    fresh = tmp_path / "fresh"
    write_synthetic_dataset(fresh, seed=0, num_train=2, num_val=1)
    write_synthetic_dataset(fresh, seed=0, num_train=1, num_val=1, overwrite=True)
    assert len(list((fresh / "images" / "train").iterdir())) == 3  # old images are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]  # no staging left


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"num_train": -2}, "num_train"),
        ({"shape_size": 16}, "at least 32"),
        ({"page_size": (40, 40)}, "at least 64"),
    ],
)
def test_bad_arguments_are_named(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(
            tmp_path / "x", **{"seed": 0, "num_train": 1, "num_val": 1, **arguments}
        )
    assert list(tmp_path.iterdir()) == []


def test_importing_it_does_not_import_torch():
    code = "import sys, sphinx_mllm.data.synthetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
