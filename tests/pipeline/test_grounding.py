"""Grounded pretraining of the visual stack: objects map to the grid token under their centre,
a short run learns their categories and changes only the visual stack, and a training session
grounds first, then keeps the grounded encoders frozen; the demo grounds, user data does not."""

import json
import re

import pytest
import torch

from sphinx_mllm.pipeline.building import build_model, resolve_config
from sphinx_mllm.pipeline.training.grounding import (
    GroundingConfig,
    grounded_images,
    pretrain_visual_grounding,
    supercategory_map,
)
from sphinx_mllm.pipeline.training.run import RunConfig, demo_run_config, grounding_config
from sphinx_mllm.pipeline.training.session import resolve_run, run_training


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sphinx_mllm.data.cli import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth(root, seed=5, train=16, val=4)
    return root


def _config(root, **settings):
    return GroundingConfig(root / "instances_train.json", root / "images" / "train", **settings)


def test_each_object_maps_to_the_demo_grid_token_under_its_centre(synthetic):
    model = build_model("demo")  # 64 px images, 8x8 grid: [start, pooled, 64 cells, end]
    config = _config(synthetic)
    items, classes = grounded_images(model, config.instances, config.images)
    annotations = json.loads((synthetic / "instances_train.json").read_text())
    expected: dict[int, dict[int, tuple[float, int]]] = {}  # image -> token -> (area, category)
    for a in annotations["annotations"]:
        x, y, w, h = a["bbox"]
        token = 2 + int((y + h / 2) // 8) * 8 + int((x + w / 2) // 8)
        cell = expected.setdefault(a["image_id"], {})
        if token not in cell or w * h < cell[token][0]:  # the smaller object keeps the cell
            cell[token] = (w * h, a["category_id"])
    names = {image["file_name"]: image["id"] for image in annotations["images"]}
    index = {category: position for position, category in enumerate(sorted(classes))}
    got = {
        names[item.path.name]: dict(zip(item.tokens, item.labels, strict=True)) for item in items
    }
    assert got == {
        image: {token: index[category] for token, (_, category) in cells.items()}
        for image, cells in expected.items()
    }


def test_dense_grounding_labels_every_cell_and_boxes_in_the_padded_frame(tmp_path):
    # a 64x32 image (padded to 64x64, 16 px above it): one object at x 8..32, y 4..12
    instances = tmp_path / "instances.json"
    instances.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 32}],
                "categories": [{"id": 5, "name": "thing"}, {"id": 9, "name": "other"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [8, 4, 24, 8]}],
            }
        )
    )
    [item], classes = grounded_images(build_model("demo"), instances, tmp_path, dense=True)
    assert classes == {5: 0, 9: 1} and item.tokens == tuple(range(2, 66))
    # in the canvas the object spans x 8..32, y 20..28: cell centres (12|20|28, 20) are inside,
    # and its centre (20, 24) lies in the cell of row 3, column 2
    on_object = {2 + 2 * 8 + col for col in (1, 2, 3)} | {2 + 3 * 8 + 2}
    assert {t for t, label in zip(item.tokens, item.labels, strict=True) if label == 1} == on_object
    assert all(
        label == 2 for t, label in zip(item.tokens, item.labels, strict=True) if t not in on_object
    )
    box = (8 / 64, 20 / 64, 32 / 64, 28 / 64)
    assert {b for b in item.boxes if b is not None} == {box}
    assert sum(b is not None for b in item.boxes) == 4


def test_a_short_grounding_run_learns_and_changes_only_the_visual_stack(synthetic, tmp_path):
    torch.manual_seed(0)
    model = build_model("demo")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    steps = []
    result = pretrain_visual_grounding(
        model,
        _config(synthetic, steps=40, batch_size=8),
        log_file=tmp_path / "grounding.jsonl",
        progress=False,
        on_step=lambda step, loss, accuracy: steps.append(loss),
    )
    assert sum(steps[-5:]) / 5 < 0.5 * sum(steps[:5]) / 5
    assert result.steps == 40 and result.held_out_accuracy is None
    assert len((tmp_path / "grounding.jsonl").read_text().splitlines()) == 40
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("visual.encoders.") for n in changed)
    assert any(n.startswith("visual.mixer.") for n in changed)
    assert not any(n.startswith("llm.") for n in changed)


def test_dense_grounding_with_boxes_learns(synthetic):
    torch.manual_seed(0)
    losses = []
    pretrain_visual_grounding(
        build_model("demo"),
        _config(synthetic, steps=30, batch_size=8, dense=True, box_weight=1.0),
        progress=False,
        on_step=lambda step, loss, accuracy: losses.append(loss),
    )
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_supercategories_map_each_class_to_its_parent(synthetic, tmp_path):
    model = build_model("demo")
    instances = synthetic / "instances_train.json"
    _, classes = grounded_images(model, instances, synthetic / "images" / "train")
    parents, names = supercategory_map(instances, classes)
    categories = {c["id"]: c for c in json.loads(instances.read_text())["categories"]}
    assert names == sorted({c["shape"] for c in categories.values()})  # the demo's: shapes
    for category, label in classes.items():
        assert names[parents[label]] == categories[category]["shape"]
    assert int(parents[len(classes)]) == len(names)  # background
    bare = json.loads(instances.read_text())
    for category in bare["categories"][:2]:
        del category["supercategory"]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    ids = sorted(c["id"] for c in bare["categories"][:2])
    with pytest.raises(ValueError, match=re.escape(f"categories {ids} have no supercategory")):
        supercategory_map(tmp_path / "bare.json", classes)


def test_grounding_with_supercategories_learns_both_heads(synthetic):
    torch.manual_seed(0)
    losses = []
    pretrain_visual_grounding(
        build_model("demo"),
        _config(synthetic, steps=30, batch_size=8, supercategory_weight=1.0),
        progress=False,
        on_step=lambda step, loss, accuracy: losses.append(loss),
    )
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    with pytest.raises(ValueError, match="supercategory_weight must be >= 0"):
        _config(synthetic, supercategory_weight=-1.0)


def test_held_out_objects_are_scored(synthetic):
    torch.manual_seed(0)
    config = _config(
        synthetic,
        steps=2,
        batch_size=4,
        eval_instances=synthetic / "instances_val.json",
        eval_images=synthetic / "images" / "val",
    )
    result = pretrain_visual_grounding(build_model("demo"), config, progress=False)
    assert 0.0 <= result.held_out_accuracy <= 1.0
    assert "held-out objects" in result.summary()


def test_bad_grounding_inputs_are_named(synthetic, tmp_path):
    with pytest.raises(ValueError, match="grounding steps must be a positive int, got 0"):
        _config(synthetic, steps=0)
    with pytest.raises(FileNotFoundError, match="No annotation file"):
        grounded_images(build_model("demo"), tmp_path / "none.json", tmp_path)
    config = GroundingConfig(synthetic / "instances_train.json", tmp_path, steps=1)
    with pytest.raises(FileNotFoundError, match="no image at"):
        pretrain_visual_grounding(build_model("demo"), config, progress=False)
    with pytest.raises(ValueError, match=r"Unknown grounding field\(s\) \['step'\]"):
        RunConfig.from_dict({"grounding": {"step": 3}})


def test_the_demo_grounds_its_synthetic_objects_and_user_data_does_not(tmp_path):
    demo = demo_run_config()
    assert demo.train.stage == "finetune"
    config = grounding_config(demo, tmp_path)
    assert config.instances == tmp_path / "data" / "instances_train.json"
    assert config.eval_images == tmp_path / "data" / "images" / "val"
    own = resolve_run(None, None, ["mine.jsonl"], [tmp_path], [], None, [])
    assert own.grounding is None and own.train.stage == "full"
    off = resolve_run(None, None, [], [], [], None, ["grounding=null"])
    assert off.grounding is None
    steps = resolve_run(None, None, [], [], [], None, ["grounding.steps=7"])
    assert steps.grounding["steps"] == 7
    with pytest.raises(ValueError, match="grounding needs instances"):
        grounding_config(RunConfig(grounding={"steps": 3}), tmp_path)


def test_relative_grounding_paths_follow_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: [{path: d.jsonl}]\ngrounding: {instances: boxes.json, images: imgs, steps: 2}\n"
    )
    run = RunConfig.from_yaml_file(path)
    config = grounding_config(run, tmp_path / "out")
    assert config.instances == tmp_path / "boxes.json" and config.images == tmp_path / "imgs"


def test_a_session_grounds_then_keeps_the_grounded_encoders_frozen(synthetic, tmp_path):
    grounding = {
        "instances": str(synthetic / "instances_train.json"),
        "images": str(synthetic / "images" / "train"),
        "steps": 3,
        "batch_size": 4,
    }
    config = tmp_path / "run.yaml"
    vqa = {"path": str(synthetic / "tasks/train/vqa.jsonl"), "images": str(synthetic)}
    train = {"stage": "finetune", "max_steps": 2, "global_batch_size": 4, "max_length": 256}
    config.write_text(
        json.dumps({"model": "demo", "data": [vqa], "train": train, "grounding": grounding})
    )
    out = tmp_path / "run"
    run_training(
        config_file=config, preset=None, data=[], images=[], eval_data=[], out=out,
        max_steps=None, settings=[], resume=False, device="cpu", progress=False,
    )  # fmt: skip
    assert len((out / "grounding.jsonl").read_text().splitlines()) == 3

    torch.manual_seed(0)  # the session's seed, model and grounding, redone by hand
    expected = build_model(resolve_config("demo"))
    pretrain_visual_grounding(expected, GroundingConfig(**grounding), progress=False)
    from sphinx_mllm.pipeline.model import SphinxModel

    trained = SphinxModel.from_pretrained(out / "model")
    fresh = build_model("demo")
    grounded = dict(expected.visual.encoders.state_dict())
    for name, value in trained.visual.encoders.state_dict().items():
        torch.testing.assert_close(value, grounded[name], rtol=0, atol=0, msg=name)
    assert any(
        not torch.equal(value, grounded[name])
        for name, value in fresh.visual.encoders.state_dict().items()
    )
