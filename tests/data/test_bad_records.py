"""Nothing lost, nothing silently wrong: records the readers used to turn into training targets
(or crash on) are refused, naming the file and the record, by one rule shared by every reader;
under `on_error="skip"` they are skipped and counted by reason. Each test is the reproduction of
a finding."""

from __future__ import annotations

import json
import pickle

import pytest

from sphinx_mllm.data.readers import (
    AnnotationFormatError,
    CocoFile,
    Problems,
    iter_array,
    iter_top_level,
    json_stream,
    read_flickr30k_entities,
    read_gqa,
    read_llava,
    read_refs_export,
    read_refs_pickle,
    read_vqav2,
)

IMAGE = {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}
CATEGORY = {"id": 1, "name": "dog"}


def annotation(**fields):
    return {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]} | fields


def coco(tmp_path, annotations=(), images=(IMAGE,), categories=(CATEGORY,), name="i.json"):
    path = tmp_path / name
    content = {"images": list(images), "annotations": list(annotations)}
    if categories is not None:
        content["categories"] = list(categories)
    path.write_text(json.dumps(content))
    return path


def objects(path, on_error="raise", **options):
    problems = Problems(on_error)
    return [o.id for o in CocoFile(path, problems, **options).objects()], problems


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([10, 10, 0, 20], r"bbox \[10, 10, 0, 20\] has no area"),
        ([10, 10, 20, -5], r"bbox \[10, 10, 20, -5\] has no area \(width 20, height -5"),
        ([True, 1, 2, 3], r"bbox is not 4 numbers: \[True, 1, 2, 3\]"),
        ([10, 10, 1e400, 5], r"bbox is not a finite number: inf"),
        ([10, 10, float("nan"), 5], r"bbox is not a finite number: nan"),
        ([60, 10, 50, 20], r"bbox \[60, 10, 50, 20\] is outside its 100x50 image"),
    ],
)
def test_boxes_without_area_booleans_and_non_finite_values_are_refused(tmp_path, bbox, message):
    path = coco(tmp_path, [annotation(bbox=bbox)])
    with pytest.raises(AnnotationFormatError, match=rf"i\.json annotations\[0\]: {message}"):
        objects(path)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (IMAGE | {"width": 10**30}, r"width 1000000000000000000000000000000 is not a whole"),
        (IMAGE | {"height": 0}, r"height 0 is not a whole number of pixels"),
        (IMAGE | {"width": 99.5}, r"width 99.5 is not a whole number"),
        (IMAGE | {"id": None}, r"id is not an integer: None"),
        (IMAGE | {"id": "1"}, r"id is not an integer: '1'"),
        (
            IMAGE | {"file_name": "../../../etc/passwd"},
            r"image '\.\./\.\./\.\./etc/passwd' leaves the image root",
        ),
        (IMAGE | {"file_name": "/etc/passwd"}, r"image '/etc/passwd' is an absolute path"),
    ],
)
def test_absurd_images_and_paths_leaving_the_image_root_are_refused(tmp_path, image, message):
    path = coco(tmp_path, images=[image])
    with pytest.raises(AnnotationFormatError, match=rf"i\.json images\[0\]: {message}"):
        CocoFile(path)


def test_image_paths_outside_the_root_are_an_explicit_opt_out(tmp_path):
    path = coco(tmp_path, images=[IMAGE | {"file_name": "/data/coco/a.jpg"}])
    assert CocoFile(path, allow_outside=True).images[1].file_name == "/data/coco/a.jpg"


def test_duplicate_image_ids_are_refused_not_merged(tmp_path):
    twin = IMAGE | {"file_name": "b.jpg"}
    other = IMAGE | {"id": 2, "file_name": "c.jpg"}
    path = coco(
        tmp_path,
        [annotation(), annotation(id=2, image_id=2)],
        images=[IMAGE, twin, other],
    )
    with pytest.raises(AnnotationFormatError, match=r"images\[0\]: image id 1 is given twice"):
        CocoFile(path)
    kept, problems = objects(path, "skip")
    assert kept == [2]  # both images with id 1 left out, and the annotation of either
    assert problems.skipped == {
        "image id 1 is given twice": 2,
        "image_id 1 is given to two images": 1,
    }


def test_null_category_names_and_missing_categories_are_refused(tmp_path):
    path = coco(tmp_path, [annotation()], categories=[{"id": 1, "name": None}])
    with pytest.raises(AnnotationFormatError, match=r"categories\[0\]: name is not a non-empty"):
        objects(path)
    path = coco(tmp_path, [annotation()], categories=None)
    with pytest.raises(
        AnnotationFormatError,
        match=r"annotations\[0\]: category_id 1 is not in the file, which has no categories",
    ):
        objects(path)


def test_bad_ids_and_boxes_are_skipped_and_counted_on_request(tmp_path):
    records = [
        annotation(id=None),
        annotation(id="7"),
        annotation(id=3, bbox=[1, 2, float("nan"), 4]),
        annotation(id=4, image_id="1"),
        annotation(id=5),
        annotation(id=5),
    ]
    kept, problems = objects(coco(tmp_path, records), "skip")
    assert kept == []
    assert problems.skipped == {
        "id is not an integer: None": 1,
        "id is not an integer: '7'": 1,
        "bbox is not a finite number: nan": 1,
        "image_id is not an integer: '1'": 1,
        "annotation id 5 is given twice": 2,
    }


def refs_pickle(tmp_path, refs):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return path


REF = {"ref_id": 0, "ann_id": 1, "image_id": 1, "split": "train"}


@pytest.mark.parametrize(
    ("sentences", "message"),
    [
        ("the dog", r"sentences is not a list of expressions but str: 'the dog'"),
        ([{"tokens": ["the"]}], r"sentences\[0\] has none of the keys \['sent'\]"),
        ([{"sent": 5}], r"sentences\[0\] is not a string: 5"),
    ],
)
def test_refcoco_sentences_must_be_a_list_of_expressions(tmp_path, sentences, message):
    refs = refs_pickle(tmp_path, [REF | {"sentences": sentences}])
    with pytest.raises(AnnotationFormatError, match=rf"refs\.p ref\[0\]: {message}"):
        list(read_refs_pickle(refs, coco(tmp_path, [annotation()])))
    rows = tmp_path / "rows.json"
    row = {"image_id": 1, "split": "x", "bbox": [1, 2, 3, 4], "width": 9, "height": 9}
    rows.write_text(json.dumps([row | {"sentences": sentences}]))
    with pytest.raises(AnnotationFormatError, match=r"rows\.json row 0: sentences"):
        list(read_refs_export(rows))


def test_a_ref_whose_object_belongs_to_another_image_is_refused(tmp_path):
    images = [IMAGE, IMAGE | {"id": 2, "file_name": "b.jpg"}]
    instances = coco(tmp_path, [annotation(image_id=2)], images=images)
    refs = refs_pickle(tmp_path, [REF | {"sentences": ["the dog"]}])
    with pytest.raises(AnnotationFormatError, match=r"ann_id 1 is an object of image 2, not 1"):
        list(read_refs_pickle(refs, instances))


def flickr(tmp_path, box, size=(100, 50)):
    (tmp_path / "Sentences").mkdir(parents=True)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Sentences" / "7.txt").write_text("[/EN#1/animals A dog] runs .\n")
    (tmp_path / "Annotations" / "7.xml").write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"
        f"<object><name>1</name><bndbox>{box}</bndbox></object></annotation>"
    )
    return tmp_path


def corners(xmin, ymin, xmax, ymax):
    return f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"


def test_one_box_rule_for_every_reader(tmp_path):
    """The box COCO refuses for leaving its image, Flickr30k refuses too (it used to clamp)."""
    with pytest.raises(AnnotationFormatError, match=r"is outside its 100x50 image"):
        objects(coco(tmp_path, [annotation(bbox=[60, 10, 50, 20])]))
    root = flickr(tmp_path / "f", corners(61, 11, 110, 30))
    with pytest.raises(
        AnnotationFormatError, match=r"7\.xml: object 0 box .* is outside its 100x50"
    ):
        list(read_flickr30k_entities(root))
    root = flickr(tmp_path / "g", corners(30, 11, 20, 30))
    with pytest.raises(AnnotationFormatError, match=r"7\.xml: object 0 box .* has no area"):
        list(read_flickr30k_entities(root))
    root = flickr(tmp_path / "h", "<ymin>1</ymin><xmax>2</xmax><ymax>3</ymax>")
    with pytest.raises(AnnotationFormatError, match=r"7\.xml: object 0 has no <xmin>"):
        list(read_flickr30k_entities(root))
    problems = Problems("skip")
    assert list(read_flickr30k_entities(root, problems=problems)) == []
    assert problems.skipped == {"object 0 has no <xmin>": 1}


def test_vqa_answers_must_be_a_list_and_gqa_an_object(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text(
        json.dumps({"questions": [{"question_id": 1, "image_id": 1, "question": "Q?"}]})
    )
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps({"annotations": [{"question_id": 1, "answers": 5}]}))
    with pytest.raises(
        AnnotationFormatError, match=r"a\.json annotations\[0\]: answers is not a list: 5"
    ):
        list(read_vqav2(questions, annotations))
    with pytest.raises(ValueError, match=r"image pattern '\{foo\}' cannot be filled.*\{image_id\}"):
        list(read_vqav2(questions, annotations, image_pattern="{foo}"))
    gqa = tmp_path / "gqa.json"
    gqa.write_text(json.dumps([{"imageId": "n1", "question": "Q?", "answer": "no"}]))
    with pytest.raises(
        AnnotationFormatError,
        match=r"gqa\.json: expected a JSON object at the top level, found array",
    ):
        list(read_gqa(gqa))


def test_llava_image_names_may_not_leave_the_image_root_unless_allowed(tmp_path):
    record = {"id": "r", "image": "../x.png", "conversations": [{"from": "human", "value": "x"}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(
        AnnotationFormatError, match=r"d\.json record r: image '\.\./x\.png' leaves"
    ):
        list(read_llava(path))
    assert list(read_llava(path, allow_outside=True)) == [record]


# -- the JSON stream ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100_000, 3_000])
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(tmp_path, depth):
    path = tmp_path / "deep.json"
    path.write_text('{"annotations": [' + "[" * depth + "]" * depth + "]}")
    with pytest.raises(AnnotationFormatError, match=r"deep\.json: a value nested deeper than"):
        list(iter_array(path, "annotations"))
    path.write_text("[" * depth + "]" * depth)
    with pytest.raises(AnnotationFormatError, match=r"deep\.json: a value nested deeper than"):
        list(iter_top_level(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"annotations": [1 2]}',
            r"expected ',' or '\]' after an element of the array 'annotations', found '2'",
        ),
        ('{"annotations": [1,, 2]}', r"invalid or truncated JSON at character 19: Expecting value"),
        ('{"a": 1 "annotations": []}', r"expected ',' or '\}' after the value of 'a'"),
        ('{"annotations": {"item": [1]}}', r"'annotations' is not an array but object"),
        ("[1, 2]", r"expected a JSON object at the top level, found array"),
        ("", r"expected a JSON object at the top level, found nothing"),
        ('{"annotations": [1, 2', r"expected ',' or '\]' .* found the end of the file"),
    ],
)
def test_malformed_json_is_named_with_the_character(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(AnnotationFormatError, match=rf"bad\.json: {message}"):
        list(iter_array(path, "annotations"))


def test_a_record_larger_than_a_block_is_decoded_a_logarithmic_number_of_times(
    tmp_path, monkeypatch
):
    """The window doubles while a record is incomplete: a 2 MB record read in 64-character
    blocks is decoded some 16 times, not once per block (32,000: quadratic)."""
    calls = []
    decode = json_stream._DECODER.raw_decode

    def counting(text, position):
        calls.append(position)
        return decode(text, position)

    monkeypatch.setattr(json_stream, "BLOCK", 64)
    monkeypatch.setattr(json_stream._DECODER, "raw_decode", counting)
    big = {"id": 1, "segmentation": [[1.25] * 400_000]}
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"images": [], "annotations": [big, {"id": 2}], "categories": []}))
    assert list(iter_array(path, "annotations")) == [big, {"id": 2}]
    assert len(calls) < 40
    calls.clear()
    assert list(iter_array(path, "categories")) == []  # the big record skipped, as cheaply
    assert len(calls) < 40
