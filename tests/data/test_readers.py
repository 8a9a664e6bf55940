"""Readers of the public formats, on tiny fixtures written in each real format, including
malformed ones: a clear error naming file and record, or a counted skip under on_error="skip"."""

import json
import pickle

import pytest

from sphinx_mllm.data.readers import (
    AnnotationFormatError,
    CocoFile,
    Problems,
    iter_array,
    iter_top_level,
    layout_category_names,
    read_aokvqa,
    read_flickr30k_entities,
    read_gqa,
    read_llava,
    read_refs_export,
    read_refs_pickle,
    read_region_descriptions,
    read_textvqa,
    read_vqav2,
)

IMAGES = [
    {"id": 1, "file_name": "a.jpg", "width": 640, "height": 428},
    {"id": 2, "file_name": "b.jpg", "width": 427, "height": 640},
]
CATEGORIES = [
    {"id": 1, "name": "person", "keypoints": ["nose", "left_eye"], "skeleton": [[1, 2]]},
    {"id": 3, "name": "car"},
]


def write(path, content):
    path.write_text(json.dumps(content))
    return path


def coco(tmp_path, annotations, name="instances.json"):
    return write(
        tmp_path / name,
        {"info": {}, "images": IMAGES, "annotations": annotations, "categories": CATEGORIES},
    )


def test_streamed_arrays_equal_json_load_across_block_boundaries(tmp_path, monkeypatch):
    import sphinx_mllm.data.readers.json_stream as json_stream

    monkeypatch.setattr(json_stream, "BLOCK", 7)  # force decoding across many small blocks
    records = [{"id": i, "value": [1.5e3, -2, 'x"y'], "t": "ünïcode"} for i in range(50)]
    path = write(tmp_path / "f.json", {"a": {"b": [1, 2]}, "annotations": records, "z": 12345})
    assert list(iter_array(path, "annotations")) == records
    assert list(iter_array(path, "missing", required=False)) == []
    with pytest.raises(AnnotationFormatError, match=r"no top-level key 'missing'.*'annotations'"):
        list(iter_array(path, "missing"))
    write(tmp_path / "top.json", records)
    assert list(iter_top_level(tmp_path / "top.json")) == records
    write(tmp_path / "dict.json", {"q1": {"x": 1}, "q2": {"x": 2}})
    assert list(iter_top_level(tmp_path / "dict.json")) == [("q1", {"x": 1}), ("q2", {"x": 2})]


def test_truncated_json_names_the_file(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"images": [], "annotations": [{"id": 1, "bbox": [1, 2, 3')
    with pytest.raises(AnnotationFormatError, match=r"cut\.json: invalid or truncated JSON"):
        list(iter_array(path, "annotations"))


def test_coco_instances_and_keypoints(tmp_path):
    path = coco(
        tmp_path,
        [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 3,
                "bbox": [468.3, 0.91, 171.7, 116.12],
                "area": 1,
                "iscrowd": 0,
            },
            {
                "id": 11,
                "image_id": 2,
                "category_id": 1,
                "bbox": [10, 20, 30, 40],
                "keypoints": [15, 25, 2, 0, 0, 0],
            },
        ],
    )
    file = CocoFile(path)
    objects = list(file.objects())
    assert [o.id for o in objects] == [10, 11]
    assert objects[0].xyxy == pytest.approx((468.3, 0.91, 640.0, 117.03))
    assert file.category_name(3) == "car" and file.keypoint_names() == ["nose", "left_eye"]
    assert objects[1].keypoints == (15, 25, 2, 0, 0, 0)
    assert {image_id: len(v) for image_id, v in file.objects_by_image().items()} == {1: 1, 2: 1}


BAD_ANNOTATIONS = [
    ({"id": 1, "image_id": 1, "category_id": 3}, "missing keys \\['bbox'\\]"),
    ({"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 2, "3", 4]}, "bbox is not 4 numbers"),
    (
        {"id": 3, "image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4]},
        "image_id 9 is not in the images",
    ),
    (
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]},
        "category_id 7 is not in the categories",
    ),
    (
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [600, 2, 100, 4]},
        "box \\[600, 2, 100, 4\\] is outside its 640x428 image",
    ),
]


@pytest.mark.parametrize(("record", "message"), BAD_ANNOTATIONS)
def test_bad_coco_records_name_file_and_record(tmp_path, record, message):
    file = CocoFile(coco(tmp_path, [record]))
    with pytest.raises(AnnotationFormatError, match=f"instances.json.*{message}"):
        list(file.objects())


def test_bad_records_are_skipped_and_counted_on_request(tmp_path):
    good = {"id": 6, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}
    problems = Problems("skip")
    file = CocoFile(coco(tmp_path, [record for record, _ in BAD_ANNOTATIONS] + [good]), problems)
    assert [o.id for o in file.objects()] == [6]
    assert problems.total == 5 and problems.skipped["missing keys ['bbox']"] == 1


def test_layout_categories_are_matched_by_name(tmp_path):
    path = write(
        tmp_path / "doclaynet.json",
        {
            "images": IMAGES,
            "annotations": [],
            "categories": [{"id": 7, "name": "Table"}, {"id": 1, "name": "Caption"}],
        },
    )
    assert layout_category_names(CocoFile(path)) == {7: "Table", 1: "Caption"}
    write(
        tmp_path / "other.json",
        {"images": IMAGES, "annotations": [], "categories": [{"id": 1, "name": "giraffe"}]},
    )
    with pytest.raises(AnnotationFormatError, match="giraffe"):
        layout_category_names(CocoFile(tmp_path / "other.json"))


def test_captions(tmp_path):
    path = write(
        tmp_path / "captions.json",
        {"images": IMAGES, "annotations": [{"id": 1, "image_id": 2, "caption": " A dog. "}]},
    )
    assert [(c.image_id, c.caption) for c in CocoFile(path).captions()] == [(2, "A dog.")]


def refs_pickle(tmp_path, refs):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return path


def test_refcoco_pickle_with_instances(tmp_path):
    instances = coco(
        tmp_path,
        [{"id": 10, "image_id": 2, "category_id": 1, "bbox": [103.93, 299.99, 134.22, 177.42]}],
    )
    refs = [
        {
            "ref_id": 0,
            "ann_id": 10,
            "image_id": 2,
            "split": "train",
            "file_name": "COCO_train2014_000000000002_0.jpg",
            "sentences": [
                {"sent": "the lady with the blue shirt", "raw": "The lady with the blue shirt"}
            ],
            "category_id": 1,
        }
    ]
    (ref,) = list(read_refs_pickle(refs_pickle(tmp_path, refs), instances))
    assert ref.sentences == ("the lady with the blue shirt",)
    assert (
        ref.bbox == (103.93, 299.99, 134.22, 177.42)
        and ref.image_size == (427, 640)
        and ref.split == "train"
    )


class Payload:
    def __reduce__(self):
        return (print, ("this pickle would run code",))


def test_a_refs_pickle_that_references_a_callable_is_refused(tmp_path):
    instances = coco(tmp_path, [])
    with pytest.raises(AnnotationFormatError, match="only plain containers and scalars"):
        list(read_refs_pickle(refs_pickle(tmp_path, [Payload()]), instances))


def test_refcoco_json_and_parquet_exports(tmp_path):
    rows = [
        {
            "image_id": 581857,
            "split": "train",
            "sentences": ["the lady with the blue shirt"],
            "bbox": [103.93, 299.99, 134.22, 177.42],
            "width": 427,
            "height": 640,
        }
    ]
    write(tmp_path / "refs.json", rows)
    (ref,) = list(read_refs_export(tmp_path / "refs.json"))
    assert ref.file_name == "COCO_train2014_000000581857.jpg" and ref.image_size == (427, 640)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "refs.parquet")
    assert list(read_refs_export(tmp_path / "refs.parquet")) == [ref]
    write(
        tmp_path / "nosize.json",
        [{k: v for k, v in rows[0].items() if k not in ("width", "height")}],
    )
    with pytest.raises(AnnotationFormatError, match="no width/height"):
        list(read_refs_export(tmp_path / "nosize.json"))


def test_flickr30k_entities(tmp_path):
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Sentences" / "42.txt").write_text(
        "[/EN#1/people Two young guys] with [/EN#2/bodyparts shaggy hair] look at "
        "[/EN#0/notvisual their hands] .\n"
    )
    (tmp_path / "Annotations" / "42.xml").write_text(
        "<annotation><size><width>500</width><height>333</height></size>"
        "<object><name>1</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>100</xmax><ymax>200</ymax></bndbox></object>"
        "<object><name>1</name><name>2</name><bndbox><xmin>51</xmin><ymin>61</ymin><xmax>90</xmax><ymax>80</ymax></bndbox></object>"
        "<object><name>0</name><nobndbox>1</nobndbox></object></annotation>"
    )
    (caption,) = list(read_flickr30k_entities(tmp_path))
    assert caption.caption == "Two young guys with shaggy hair look at their hands ."
    guys, hair, hands = caption.phrases
    assert caption.caption[guys.start : guys.end] == "Two young guys"
    assert guys.boxes == ((10.0, 20.0, 100.0, 200.0), (50.0, 60.0, 90.0, 80.0))
    assert (
        hair.boxes == ((50.0, 60.0, 90.0, 80.0),)
        and hands.boxes == ()
        and hands.types == ("notvisual",)
    )
    (tmp_path / "Annotations" / "42.xml").write_text("<annotation><broken")
    with pytest.raises(
        AnnotationFormatError, match=r"42\.xml: not a Flickr30k Entities annotation"
    ):
        list(read_flickr30k_entities(tmp_path))


def test_vqav2_joins_questions_and_annotations(tmp_path):
    questions = write(
        tmp_path / "q.json",
        {
            "questions": [
                {"image_id": 9, "question": "What color? ", "question_id": 90},
                {"image_id": 9, "question": "Orphan?", "question_id": 91},
            ]
        },
    )
    answers = [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(10)]
    annotations = write(
        tmp_path / "a.json",
        {
            "annotations": [
                {
                    "question_id": 90,
                    "image_id": 9,
                    "question_type": "what",
                    "answer_type": "other",
                    "multiple_choice_answer": "red",
                    "answers": answers,
                }
            ]
        },
    )
    problems = Problems("skip")
    (question,) = list(read_vqav2(questions, annotations, problems=problems))
    assert (question.image, question.question, question.answer, len(question.answers)) == (
        "COCO_val2014_000000000009.jpg",
        "What color?",
        "red",
        10,
    )
    assert problems.skipped == {"question 91 has no annotation": 1}


def test_gqa_aokvqa_textvqa_visual_genome(tmp_path):
    write(
        tmp_path / "gqa.json",
        {
            "201": {
                "imageId": "n1",
                "question": "Is it red?",
                "answer": "no",
                "fullAnswer": "No, it is blue.",
            }
        },
    )
    (gqa,) = list(read_gqa(tmp_path / "gqa.json"))
    assert (gqa.image, gqa.answer, gqa.extra["full_answer"]) == (
        "images/n1.jpg",
        "no",
        "No, it is blue.",
    )
    write(
        tmp_path / "aok.json",
        [
            {
                "question_id": "x",
                "image_id": 5,
                "question": "Why?",
                "choices": ["a", "b", "c", "d"],
                "correct_choice_idx": 2,
                "direct_answers": ["c"] * 10,
                "rationales": [],
            }
        ],
    )
    (aok,) = list(read_aokvqa(tmp_path / "aok.json"))
    assert (aok.answer, aok.correct_choice, aok.choices) == ("c", 2, ("a", "b", "c", "d"))
    write(
        tmp_path / "bad_aok.json",
        [
            {
                "question_id": "x",
                "image_id": 5,
                "question": "Why?",
                "choices": ["a"],
                "correct_choice_idx": 3,
            }
        ],
    )
    with pytest.raises(AnnotationFormatError, match="correct_choice_idx 3 outside its 1 choices"):
        list(read_aokvqa(tmp_path / "bad_aok.json"))
    write(
        tmp_path / "textvqa.json",
        {
            "data": [
                {
                    "question_id": 1,
                    "image_id": "abc",
                    "question": "What brand?",
                    "answers": ["nike"] * 7 + ["adidas"] * 3,
                    "image_width": 1024,
                    "image_height": 768,
                }
            ]
        },
    )
    (text,) = list(read_textvqa(tmp_path / "textvqa.json"))
    assert (text.answer, text.image_size) == ("nike", (1024, 768))
    write(
        tmp_path / "vg.json",
        [
            {
                "id": 7,
                "regions": [
                    {
                        "region_id": 1,
                        "image_id": 7,
                        "phrase": "a red kite ",
                        "x": 5,
                        "y": 6,
                        "width": 7,
                        "height": 8,
                    }
                ],
            }
        ],
    )
    (region,) = list(read_region_descriptions(tmp_path / "vg.json"))
    assert (region.phrase, region.bbox) == ("a red kite", (5.0, 6.0, 7.0, 8.0))


def test_llava_json_and_jsonl(tmp_path):
    record = {
        "id": "1",
        "image": "a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nHi"},
            {"from": "gpt", "value": "Hello"},
        ],
    }
    write(tmp_path / "d.json", [record])
    assert list(read_llava(tmp_path / "d.json")) == [record]
    (tmp_path / "d.jsonl").write_text(
        json.dumps(record)
        + "\n\n{not json\n"
        + json.dumps({"id": "2", "conversations": [{"from": "robot", "value": "x"}]})
        + "\n"
    )
    problems = Problems("skip")
    assert list(read_llava(tmp_path / "d.jsonl", problems)) == [record]
    assert problems.total == 2
    with pytest.raises(AnnotationFormatError, match=r"d\.jsonl line 3: invalid JSON"):
        list(read_llava(tmp_path / "d.jsonl"))
