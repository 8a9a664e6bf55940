"""Metrics checked by hand against their official definitions."""

from fractions import Fraction

import pytest

from sphinx_mllm.data.metrics import (
    MmeRecord,
    PopeScores,
    anls,
    exact_match,
    levenshtein,
    mme_parse_answer,
    mme_scores,
    normalize_vqa_answer,
    pope_answer_is_yes,
    pope_scores,
    rec_accuracy,
    rec_hit,
    rec_iou,
    relaxed_accuracy,
    vqa_accuracy,
)

# --- VQA accuracy -------------------------------------------------------------------------------


def leave_one_out(prediction: str, answers: list[str]) -> Fraction:
    """The official formula written out: mean over left-out answers of min(1, matches / 3)."""
    scores = []
    for left_out in range(len(answers)):
        others = answers[:left_out] + answers[left_out + 1 :]
        scores.append(min(Fraction(1), Fraction(others.count(prediction), 3)))
    return sum(scores, Fraction(0)) / len(scores)


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        (0, Fraction(0)),
        (1, Fraction(3, 10)),
        (2, Fraction(6, 10)),
        (3, Fraction(9, 10)),
        (4, Fraction(1)),
        (10, Fraction(1)),
    ],
)
def test_vqa_accuracy_is_the_leave_one_out_average(matching, expected):
    answers = ["red"] * matching + ["blue"] * (10 - matching)
    assert leave_one_out("red", answers) == expected
    assert vqa_accuracy("red", answers) == float(expected)


def test_vqa_one_match_scores_exactly_three_tenths():
    answers = ["2"] + ["3"] * 5 + ["4"] * 4
    # Left out the match: 0 others match; left out any of the other 9: 1 match -> 1/3.
    assert vqa_accuracy("2", answers) == 0.3
    assert vqa_accuracy("3", answers) == 1.0
    assert vqa_accuracy("4", answers) == 1.0


def test_vqa_prediction_is_normalised_before_matching():
    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    assert vqa_accuracy("the dog", ["dog"] * 3 + ["cat"] * 7) == 0.9
    assert vqa_accuracy("10,000", ["10000"] * 4 + ["10"] * 6) == 1.0
    assert vqa_accuracy("dont know", ["don't know"] * 2 + ["no"] * 8) == 0.6


def test_vqa_answers_get_punctuation_handling_only_when_they_disagree():
    # Disagreeing answers are punctuation-processed: "t-shirt" becomes "t shirt" on both sides.
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 4 + ["shirt"] * 6) == 1.0
    # Unanimous answers are left alone (official quirk), so the normalised prediction misses...
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    # ...unless the references are normalised too (TextVQA/M4C behaviour).
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10, normalize_answers=True) == 1.0
    # Human answers are never lower-cased by the official script.
    assert vqa_accuracy("yes", ["Yes"] * 10) == 0.0
    assert vqa_accuracy("yes", ["Yes"] * 10, normalize_answers=True) == 1.0


def test_vqa_needs_answers():
    with pytest.raises(ValueError, match="'cat'"):
        vqa_accuracy("cat", [])


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("yes.", "yes"),
        ("Yes!", "yes"),
        ("10,000", "10000"),
        ("3.5", "3.5"),
        ("2.", "2"),
        ("a dog", "dog"),
        ("An apple", "apple"),
        ("the man in the hat", "man in hat"),
        ("Two", "2"),
        ("none", "0"),
        ("eleven", "eleven"),
        ("dont", "don't"),
        ("hadn'tve", "hadn't've"),
        ("t-shirt", "t shirt"),
        ("left - right", "left right"),
        ("red, white", "red white"),
        ("it's 12:30", "it's 12:30"),
        ("  multi\nline\tanswer ", "multi line answer"),
    ],
)
def test_vqa_answer_normalisation(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


# --- exact match, relaxed accuracy, ANLS --------------------------------------------------------


def test_exact_match_lowercases_and_strips_the_final_period():
    assert exact_match("Yes.", "yes") == 1.0
    assert exact_match(" Left ", "left.") == 1.0
    assert exact_match("3.5", "35") == 0.0
    assert exact_match("red car", ["car", "Red car"]) == 1.0
    assert exact_match("red", "redd") == 0.0


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("10.4", "10", 1.0),  # 4% off
        ("10.5", "10", 1.0),  # exactly 5%
        ("10.6", "10", 0.0),  # 6% off
        ("-9.6", "-10", 1.0),
        ("5%", "0.05", 1.0),  # percentages read as fractions
        ("0.0", "0", 0.0),  # a zero target is never numeric (Pix2Struct quirk)
        ("0", "0", 1.0),
        ("Yes", "yes", 1.0),
        ("Tuesday", "Monday", 0.0),
        ("twelve", "12", 0.0),
    ],
)
def test_relaxed_accuracy(prediction, target, expected):
    assert relaxed_accuracy(prediction, target) == expected


def test_relaxed_accuracy_takes_the_best_of_several_targets():
    assert relaxed_accuracy("20", ["10", "20.5"]) == 1.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


def test_anls():
    assert anls("hello", "hello") == 1.0
    assert anls("helo", "hello") == pytest.approx(0.8)  # 1 edit over 5 characters
    assert anls("  HELLO  world ", "hello world") == 1.0
    assert anls("ab", "ac") == 0.0  # NL = 0.5 is not below the threshold
    assert anls("abc", "abd") == pytest.approx(2 / 3)
    assert anls("completely different", "xyz") == 0.0
    assert anls("1990", ["1989", "1990"]) == 1.0
    assert anls("", "") == 1.0


# --- REC ----------------------------------------------------------------------------------------

IMAGE_SIZE = (640, 428)
GT_XYXY = (468.3, 0.91, 640.0, 117.03)


def test_rec_worked_example():
    assert rec_iou("[0.73,0.17,1.00,0.35]", GT_XYXY, IMAGE_SIZE) == pytest.approx(0.9695, abs=5e-5)
    assert rec_hit("The box is [0.73,0.17,1.00,0.35].", GT_XYXY, IMAGE_SIZE)
    assert rec_iou("[0.73,0.00,1.00,0.27]", GT_XYXY, IMAGE_SIZE) == pytest.approx(0.294, abs=5e-4)
    assert not rec_hit("[0.73,0.00,1.00,0.27]", GT_XYXY, IMAGE_SIZE)


@pytest.mark.parametrize(
    "answer",
    [
        "the man on the right",  # no bracket
        "[the man] [0.73,0.17,1.00,0.35]",  # the first bracket counts
        "[0.73,0.17,1.00]",  # three numbers
        "[0.73,0.17,1.00,0.35;0.1,0.1,0.2,0.2]",  # eight numbers
        "[0.1,0.1,0.2,0.2] [0.73,0.17,1.00,0.35]",  # first box misses
    ],
)
def test_rec_misses(answer):
    assert not rec_hit(answer, GT_XYXY, IMAGE_SIZE)


def test_rec_overflowing_coordinates_are_a_miss_not_an_error():
    """A 310-digit coordinate reads as infinity (it raised OverflowError)."""
    huge = "9" * 310
    assert not rec_hit(f"[{huge},0.17,1.00,0.35]", GT_XYXY, IMAGE_SIZE)
    assert not rec_hit(f"<box>({huge},1),(2,3)</box>", GT_XYXY, IMAGE_SIZE)
    assert not rec_hit("[" * 200_000, GT_XYXY, IMAGE_SIZE)


def test_rec_reads_llava_spacing_and_integers():
    assert rec_hit("[0.73, 0.17, 1, 0.35]", GT_XYXY, IMAGE_SIZE)


def test_rec_accuracy():
    answers = ["[0.73,0.17,1.00,0.35]", "[0.73,0.00,1.00,0.27]", "[0.70,0.15,1.00,0.36]"]
    assert rec_accuracy(answers, [GT_XYXY] * 3, [IMAGE_SIZE] * 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 predictions, 2 boxes"):
        rec_accuracy(answers, [GT_XYXY] * 2, [IMAGE_SIZE] * 3)


# --- POPE and MME -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "is_yes"),
    [
        ("Yes, there is a dog.", True),
        ("No, there is no dog.", False),
        ("There is not a dog in the image.", False),
        ("yes", True),
        ("I see a dog. There is no cat.", True),  # only the first sentence counts
        ("NO", True),  # official quirk: only "No", "no" and "not" are read as no
        ("no", False),
    ],
)
def test_pope_answer_parsing(answer, is_yes):
    assert pope_answer_is_yes(answer) is is_yes


def test_pope_scores_on_a_hand_made_set():
    predictions = ["Yes.", "No.", "No, it is not.", "Yes", "Yes, there is.", "no"]
    labels = ["yes", "no", "yes", "no", "yes", "no"]
    # said yes: T F F T T F; truth: T F T F T F -> TP 2, TN 2, FP 1, FN 1.
    scores = pope_scores(predictions, labels)
    assert scores == PopeScores(
        accuracy=4 / 6, precision=2 / 3, recall=2 / 3, f1=pytest.approx(2 / 3), yes_ratio=3 / 6
    )


def test_pope_rejects_unknown_labels_and_length_mismatch():
    with pytest.raises(ValueError, match=r"label 1 .* 'maybe'"):
        pope_scores(["yes", "no"], ["yes", "maybe"])
    with pytest.raises(ValueError, match="2 predictions and 1 labels"):
        pope_scores(["yes", "no"], ["yes"])


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("Yes, it is.", "yes"),
        ("Not really", "no"),
        ("Maybe", "other"),
    ],
)
def test_mme_answer_parsing(answer, label):
    assert mme_parse_answer(answer) == label


def test_mme_acc_and_acc_plus_per_category():
    records = [
        # existence: image a both right, image b one right -> acc 75, acc+ 50.
        MmeRecord("existence", "a.jpg", "Yes", "Yes"),
        MmeRecord("existence", "a.jpg", "No", "No"),
        MmeRecord("existence", "b.jpg", "Yes", "Yes"),
        MmeRecord("existence", "b.jpg", "Yes", "No"),
        # code_reasoning: one image, an unreadable answer -> acc 50, acc+ 0.
        MmeRecord("code_reasoning", "c.png", "Yes", "Yes"),
        MmeRecord("code_reasoning", "c.png", "I cannot tell", "No"),
    ]
    scores = mme_scores(records)
    existence = scores.categories["existence"]
    assert (existence.acc, existence.acc_plus, existence.score) == (75.0, 50.0, 125.0)
    assert (existence.questions, existence.images) == (4, 2)
    code = scores.categories["code_reasoning"]
    assert (code.acc, code.acc_plus, code.score) == (50.0, 0.0, 50.0)
    assert scores.perception == 125.0
    assert scores.cognition == 50.0


def test_mme_rejects_a_truth_that_is_not_yes_or_no():
    with pytest.raises(ValueError, match=r"'a\.jpg'.*'Maybe'"):
        mme_scores([MmeRecord("existence", "a.jpg", "Yes", "Maybe")])
