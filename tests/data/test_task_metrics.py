"""Task metrics: box mAP against pycocotools run directly, CIDEr-D against pycocoevalcap (when
installed) and a hand-worked case, phrase-box F1 and PCK on hand-worked cases, malformed replies
as misses, and records lacking their ground truth named in the error."""

import contextlib
import io
import math

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sphinx_mllm.data.boxes import format_box, format_phrase, normalize_box
from sphinx_mllm.data.metrics import (
    AUTO_METRICS,
    TASK_METRICS,
    cider_d,
    make_metric,
    metric_for_task,
    tokenize,
)

SQUARE = [100, 100]  # the padded frame of a square image is plain scaling: box text x 100 = pixels


def _record(rid, task, reply="", **meta):
    return {
        "id": rid,
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nQ"},
            {"from": "gpt", "value": reply},
        ],
        "meta": {"task": task, **meta},
    }


def _scores(name, pairs):
    metric = make_metric(name)
    figures = [metric.add(reply, record) for reply, record in pairs]
    return metric.result(), figures


# -- box mAP: parity with pycocotools ---------------------------------------------------------

# three detection records on 100 px square images; replies in SPHINX's text, boxes in pixels
DETECTION_CASES = [
    ("circle", [[10, 10, 50, 50], [60, 60, 90, 90]],
     [[12, 10, 50, 52], [0, 0, 5, 5], [60, 62, 88, 90]]),
    ("circle", [[20, 20, 40, 40]], [[25, 25, 45, 45]]),  # IoU 0.39: a miss at 0.5
    ("square", [[0, 0, 30, 30], [50, 50, 70, 80]], [[0, 0, 28, 30], [50, 52, 70, 74]]),
]  # fmt: skip


def _coco_stats(truth, detections):
    """pycocotools run directly: truth [(image, category, xyxy)], detections [(..., score)]."""
    images = sorted({t[0] for t in truth} | {d[0] for d in detections})
    names = sorted({t[1] for t in truth} | {d[1] for d in detections})
    ids = {name: i for i, name in enumerate(names, 1)}

    def xywh(box):
        return [box[0], box[1], box[2] - box[0], box[3] - box[1]]

    dataset = {
        "images": [{"id": i, "width": 100, "height": 100} for i in images],
        "categories": [{"id": i, "name": n} for n, i in ids.items()],
        "annotations": [
            {"id": k, "image_id": i, "category_id": ids[c], "bbox": xywh(b), "iscrowd": 0,
             "area": (b[2] - b[0]) * (b[3] - b[1])}
            for k, (i, c, b) in enumerate(truth, 1)
        ],
    }  # fmt: skip
    results = [
        {"image_id": i, "category_id": ids[c], "bbox": xywh(b), "score": s}
        for i, c, b, s in detections
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = dataset
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[1], evaluation.stats[0]


def _reply(boxes, phrase="circle"):
    return format_phrase(phrase, [[v / 100 for v in box] for box in boxes])


def test_detection_map_equals_pycocotools_on_the_same_boxes_ranked_by_position():
    pairs = [
        (_reply(predicted), _record(f"d{i}", "detection", image_size=SQUARE, objects={c: gt}))
        for i, (c, gt, predicted) in enumerate(DETECTION_CASES)
    ]
    result, figures = _scores("detection_map", pairs)
    truth = [(i, c, box) for i, (c, gt, _) in enumerate(DETECTION_CASES, 1) for box in gt]
    detections = [
        (i, c, box, 1 / (1 + k))  # the asked category, whatever phrase the reply echoes
        for i, (c, _, predicted) in enumerate(DETECTION_CASES, 1)
        for k, box in enumerate(predicted)
    ]
    ap50, ap = _coco_stats(truth, detections)
    assert 0 < ap < ap50 < 1  # a case where neither figure is trivially 0 or 1
    assert result.score == pytest.approx(ap50, abs=1e-12)
    assert result.extras == {"coco_map": pytest.approx(ap, abs=1e-12)}
    assert result.count == 3 and result.per_record == (None, None, None)
    assert [f["boxes"] for f in figures] == [3, 1, 2]


def test_layout_map_assigns_boxes_by_phrase_and_equals_pycocotools():
    objects = {"text": [[10, 10, 90, 30], [10, 40, 90, 60]], "Title": [[10, 0, 60, 8]]}
    reply = " ".join(
        [
            _reply([[10, 12, 90, 30], [10, 70, 90, 90]], "Text"),  # names compared normalised
            _reply([[10, 0, 58, 8]], "title"),
            format_box([0.1, 0.4, 0.9, 0.6]),  # no phrase: dropped, though it would match
            _reply([[10, 40, 90, 60]], "figure"),  # no record has a figure: no AP, no cost
        ]
    )
    result, _ = _scores("layout_map", [(reply, _record("p", "layout", image_size=SQUARE,
                                                       objects=objects))])  # fmt: skip
    truth = [(1, "text", b) for b in objects["text"]] + [(1, "title", objects["Title"][0])]
    detections = [
        (1, "text", [10, 12, 90, 30], 1.0),
        (1, "text", [10, 70, 90, 90], 1 / 2),
        (1, "title", [10, 0, 58, 8], 1 / 3),
    ]
    ap50, ap = _coco_stats(truth, detections)
    assert result.score == pytest.approx(ap50, abs=1e-12)
    assert result.extras["coco_map"] == pytest.approx(ap, abs=1e-12)
    assert 0.5 < result.score < 1


def test_box_ranks_follow_the_order_of_the_reply():
    record = _record("d", "detection", image_size=SQUARE, objects={"circle": [[10, 10, 50, 50]]})
    right, wrong = [10, 10, 50, 50], [60, 60, 90, 90]
    first, _ = _scores("detection_map", [(_reply([right, wrong]), record)])
    last, _ = _scores("detection_map", [(_reply([wrong, right]), record)])
    assert first.score == pytest.approx(1.0) and last.score == pytest.approx(0.5)


def test_boxes_are_compared_in_the_padded_frame_of_the_original_image():
    # the recipe's worked example: image 640x428, ground truth [468.3, 0.91, 640.0, 117.03]
    box, size = [468.3, 0.91, 640.0, 117.03], [640, 428]
    record = _record("r", "detection", image_size=size, objects={"man": [box]})
    padded, _ = _scores("detection_map", [("<p>man</p> [0.73,0.17,1.00,0.35]", record)])
    per_axis, _ = _scores("detection_map", [("<p>man</p> [0.73,0.00,1.00,0.27]", record)])
    assert padded.score == pytest.approx(1.0) and per_axis.score == 0.0
    assert format_box(normalize_box(box, size)) == "[0.73,0.17,1.00,0.35]"


# -- CIDEr-D --------------------------------------------------------------------------------------

CAPTIONS = [
    ("a red circle and a blue square", ["a red circle next to a blue square", "two shapes"]),
    ("a green cross", ["a green cross on grey", "one green cross", "a cross"]),
    ("three circles", ["three red circles", "some circles"]),
    ("", ["an empty page"]),
    ("a dog", ["a dog runs", "a dog"]),
    ("a red red red circle", ["a red circle", "the red one"]),  # clipped to the reference's tf
]


def test_cider_d_equals_pycocoevalcap_on_the_same_tokens():
    pytest.importorskip("pycocoevalcap", reason="parity needs pycocoevalcap (pip install)")
    from pycocoevalcap.cider.cider import Cider as ReferenceCider

    candidates = [tokenize(c) for c, _ in CAPTIONS]
    references = [[tokenize(r) for r in refs] for _, refs in CAPTIONS]
    score, per_image = cider_d(candidates, references)
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [candidate] for i, candidate in enumerate(candidates)}
    expected, expected_per_image = ReferenceCider().compute_score(gts, res)
    assert score == pytest.approx(expected, abs=1e-12)
    assert per_image == pytest.approx(list(expected_per_image), abs=1e-12)
    assert 0 < score < 10


def test_cider_d_on_a_hand_worked_corpus():
    # two images, one reference each; every n-gram is in one image's references: idf = log 2.
    # "a b" against "a b": unigram and bigram cosines 1, no tri- or 4-grams: (1 + 1) / 4 * 10.
    # "c" against "c d": unigram cosine 1/sqrt(2), bigram 0, length penalty exp(-1 / 72).
    score, per_image = cider_d(["a b", "c"], [["a b"], ["c d"]])
    assert per_image[0] == pytest.approx(5.0)
    assert per_image[1] == pytest.approx(10 / 4 / math.sqrt(2) * math.exp(-1 / 72))
    assert score == pytest.approx(sum(per_image) / 2)
    assert cider_d(["a b"], [["a b"]])[0] == 0.0  # one image: every idf is log 1 - log 1
    # repeating a word does not raise its weight past the reference's (CIDEr-D's clipping): "a a"
    # against "a b" has unigram dot min(2w, w) * w = w^2 over norms 2w * sqrt(2) w
    _, (repeated, _) = cider_d(["a a", "c d"], [["a b"], ["c d"]])
    assert repeated == pytest.approx(10 / 4 / (2 * math.sqrt(2)))


def test_cider_metric_tokenises_and_takes_meta_references_when_present():
    assert tokenize("A dog's ball, on the GRASS.") == "a dog's ball on the grass"
    records = [
        _record("c0", "short_caption", "A red circle."),
        _record("c1", "short_caption", "Two blue squares.", references=["two blue squares", "x"]),
    ]
    result, _ = _scores("cider", [("a red circle", records[0]), ("Two blue squares", records[1])])
    expected, per_image = cider_d(
        ["a red circle", "two blue squares"], [["a red circle"], ["two blue squares", "x"]]
    )
    assert result.score == pytest.approx(expected) and result.per_record == tuple(per_image)


# -- phrase-box F1 and PCK: hand-worked ------------------------------------------------------


def test_phrase_box_f1_matches_one_to_one_by_phrase_and_iou():
    objects = {"the man": [[10, 10, 50, 90]], "a horse": [[40, 40, 100, 100]]}
    record = _record("g", "grounded_caption", image_size=SQUARE, objects=objects)
    reply = (
        "<p>The  Man</p> [0.10,0.12,0.50,0.90] and again <p>the man</p> [0.10,0.10,0.50,0.90] "
        "rides <p>a horse</p> [0.00,0.00,0.20,0.20] near [0.40,0.40,1.00,1.00] "
        "<p>a dog</p> [0.40,0.40,1.00,1.00]."
    )
    # 5 predictions, 2 truths: one "the man" matches (one-to-one), the horse box is elsewhere,
    # the phrase-less and "a dog" boxes match nothing: precision 1/5, recall 1/2, F1 2/7
    _, (figures,) = _scores("phrase_f1", [(reply, record)])
    assert figures == pytest.approx({"f1": 2 / 7, "precision": 1 / 5, "recall": 1 / 2})
    perfect = _record("h", "grounded_caption", image_size=SQUARE, objects={"a cat": [[0, 0, 9, 9]]})
    both, _ = _scores(
        "phrase_f1", [(reply, record), ("<p>a cat</p> [0.00,0.00,0.09,0.09]", perfect)]
    )
    # micro average: (1 + 1) matched of 6 predicted and 3 true: F1 4 / 9 (the per-record mean
    # would be (2/7 + 1) / 2)
    assert both.score == pytest.approx(4 / 9)
    assert both.extras == pytest.approx({"precision": 2 / 6, "recall": 2 / 3})
    assert both.per_record == pytest.approx((2 / 7, 1.0))


def test_greedy_matching_gives_a_truth_to_its_best_prediction():
    objects = {"cup": [[0, 0, 40, 40], [20, 0, 60, 40]]}
    record = _record("g", "grounded_caption", image_size=SQUARE, objects=objects)
    # the first box hits both cups (IoU 0.57 and 0.63), the second only the second cup (IoU 1,
    # 0.33 with the first): taking each box's best cup in reply order would match one pair,
    # greedy by IoU matches both
    reply = "<p>cup</p> [0.11,0.00,0.51,0.40;0.20,0.00,0.60,0.40]"
    _, (figures,) = _scores("phrase_f1", [(reply, record)])
    assert figures["f1"] == pytest.approx(1.0)


def test_pck_counts_keypoints_within_a_fifth_of_the_larger_box_side():
    # box 100 x 50: threshold 0.2 * 100 = 20 px (strictly closer)
    meta = {
        "image_size": SQUARE,
        "bbox_xyxy": [0, 25, 100, 75],
        "keypoints": {"nose": [50, 30], "left_shoulder": [40, 50], "right shoulder": [60, 50]},
    }
    record = _record("p", "pose", **meta)
    reply = (
        "<p>nose</p> [0.56,0.38] <p>Left Shoulder</p> [0.40,0.70] <p>left shoulder</p> "
        "[0.40,0.50] <p>left knee</p> [0.10,0.10]"
    )
    # nose 10 px off: right; left shoulder's first point 20 px off: wrong (its second point,
    # exact, is not read); right shoulder missing: wrong; left knee is not labelled: ignored
    result, _ = _scores("pck", [(reply, record)])
    assert result.score == pytest.approx(1 / 3) and result.per_record == pytest.approx((1 / 3,))
    one = _record(
        "q", "pose", image_size=SQUARE, bbox_xyxy=[0, 0, 10, 10], keypoints={"nose": [5, 5]}
    )
    both, _ = _scores("pck", [(reply, record), ("<p>nose</p> [0.05,0.05]", one)])
    assert both.score == pytest.approx(2 / 4)  # keypoints, not records, are averaged


def test_rec_keeps_acc_at_half_and_reports_the_mean_iou():
    meta = {"bbox_xyxy": [468.3, 0.91, 640.0, 117.03], "image_size": [640, 428]}
    pairs = [
        ("[0.73,0.17,1.00,0.35]", _record("a", "rec", **meta)),
        ("[0.73,0.00,1.00,0.27]", _record("b", "rec", **meta)),
    ]
    result, figures = _scores("rec", pairs)
    assert [f["iou"] for f in figures] == pytest.approx([0.9695, 0.294], abs=1e-3)
    assert result.score == 0.5 and result.per_record == (1.0, 0.0)
    assert result.extras == {"miou": pytest.approx((0.9695 + 0.294) / 2, abs=1e-3)}


def test_vqa_metric_is_the_official_accuracy_with_exact_match_as_fallback():
    answers = ["2"] * 3 + ["3"] * 7
    result, _ = _scores(
        "vqa",
        [("Two", _record("a", "vqa", "2", answers=answers)), ("yes.", _record("b", "vqa", "Yes"))],
    )
    assert result.per_record == pytest.approx((0.9, 1.0))
    assert result.extras == {"exact": pytest.approx(0.0)}  # only the record with answers


# -- malformed replies, missing ground truth, names ---------------------------------------------

MALFORMED = [
    "",
    "I see no box.",
    "[0.10,0.20,0.30]",
    "<p>circle</p> [0.1,0.2,0.3]",
    "garbage ]]] [[[ <p></p> [a,b,c,d]",
    "<p>circle</p> [0.10,0.20,0.30,0.40",
    "<p>circle</p> [" + "9" * 400 + ",0.1,0.2,0.3]",
    "<p>nose</p> [0.5] <p>nose</p> [0.5,0.5,0.5]",
]


def _ground_truth_records():
    objects = {"circle": [[10, 20, 30, 40]]}
    return {
        "detection_map": _record("d", "detection", image_size=SQUARE, objects=objects),
        "layout_map": _record("l", "layout", image_size=SQUARE, objects=objects),
        "phrase_f1": _record("g", "grounded_caption", image_size=SQUARE, objects=objects),
        "pck": _record(
            "p", "pose", image_size=SQUARE, bbox_xyxy=[0, 0, 50, 50], keypoints={"nose": [50, 50]}
        ),
        "rec": _record("r", "rec", image_size=SQUARE, bbox_xyxy=[10, 20, 30, 40]),
        "cider": _record("c", "short_caption", "a red circle"),
        "vqa": _record("v", "vqa", "red", answers=["red"] * 10),
        "exact": _record("e", "multiple_choice", "A"),
    }


@pytest.mark.parametrize("name", sorted(TASK_METRICS))
def test_malformed_replies_score_as_misses(name):
    record = _ground_truth_records()[name]
    result, _ = _scores(name, [(reply, record) for reply in MALFORMED])
    assert result.score == 0.0 and result.count == len(MALFORMED)


MISSING = {
    "detection_map": ("objects", {"image_size": SQUARE}),
    "layout_map": ("image_size", {"objects": {}}),
    "phrase_f1": ("objects", {"image_size": SQUARE}),
    "pck": ("keypoints", {"image_size": SQUARE, "bbox_xyxy": [0, 0, 5, 5]}),
    "rec": ("bbox_xyxy", {"image_size": SQUARE}),
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_a_record_without_its_ground_truth_is_named(name):
    key, meta = MISSING[name]
    with pytest.raises(ValueError, match=rf"record 'rec-7'.*meta\.{key}"):
        make_metric(name).add("[0.1,0.2,0.3,0.4]", _record("rec-7", "x", **meta))


@pytest.mark.parametrize(
    ("name", "meta", "message"),
    [
        ("detection_map", {"image_size": SQUARE, "objects": {"a": [], "b": []}}, "one category"),
        ("layout_map", {"image_size": SQUARE, "objects": {"a": [[3, 0, 1, 1]]}}, r"x1 <= x2"),
        ("pck", {"image_size": SQUARE, "bbox_xyxy": [0, 0, 0, 0], "keypoints": {"nose": [1, 1]}},
         "positive size"),
        ("pck", {"image_size": SQUARE, "bbox_xyxy": [0, 0, 5, 5], "keypoints": {}}, "at least one"),
        ("rec", {"image_size": [0, 5], "bbox_xyxy": [0, 0, 1, 1]}, "image_size"),
    ],
)  # fmt: skip
def test_bad_ground_truth_is_named(name, meta, message):
    with pytest.raises(ValueError, match=rf"(record 'bad-1'|image_size).*{message}"):
        make_metric(name).add("", _record("bad-1", "x", **meta))


def test_a_corpus_without_ground_truth_boxes_or_records_is_an_error():
    metric = make_metric("detection_map")
    with pytest.raises(ValueError, match="detection_map metric has no records"):
        metric.result()
    metric.add("", _record("d", "detection", image_size=SQUARE, objects={"circle": []}))
    with pytest.raises(ValueError, match="no ground-truth box"):
        metric.result()


def test_auto_choices_and_unknown_names():
    assert metric_for_task("detection") == "detection_map"
    assert metric_for_task("pose") == "pck" and metric_for_task(None) == "exact"
    assert metric_for_task("conversation") == "exact"
    assert set(AUTO_METRICS.values()) <= set(TASK_METRICS)
    with pytest.raises(ValueError, match=r"unknown metric 'cidr'.*did you mean cider"):
        make_metric("cidr")


# -- the ground truth the task builders keep --------------------------------------------------


def test_builders_keep_every_box_and_labelled_keypoint_in_pixels(tmp_path):
    from tests.data.test_tasks import build, coco_file

    boxes = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [i, 0, 10, 10]} for i in range(5)]
    _, (detected,) = build("detection", [coco_file(tmp_path, boxes)], max_boxes=3)
    # the reply text is capped at 3 boxes; the truth it is scored against is not
    assert detected.meta["objects"] == {"dog": [[i, 0, i + 10, 10] for i in range(5)]}
    _, (page,) = build("layout", [coco_file(tmp_path, boxes[:2])])
    assert page.meta["objects"] == {"dog": [[0, 0, 10, 10], [1, 0, 11, 10]]}
    keypoints = [0.0] * 51
    keypoints[0:3] = [50, 25, 2]
    keypoints[15:18] = [40, 30, 1]
    person = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 10, 40, 40],
               "keypoints": keypoints}]  # fmt: skip
    _, (pose,) = build("pose", [coco_file(tmp_path, person, ({"id": 1, "name": "person"},))])
    assert pose.meta["bbox_xyxy"] == [30, 10, 70, 50]
    assert pose.meta["keypoints"] == {"nose": [50, 25], "left shoulder": [40, 30]}
    # the builder's own answer scores full marks against the truth it wrote
    result, _ = _scores("pck", [(pose.conversations[1]["value"], pose.to_record())])
    assert result.score == 1.0
