"""POPE object-hallucination scores: accuracy, precision, recall, F1 and the share of "yes".

Source: POPE (Li et al., EMNLP 2023), `evaluate.py` of RUCAIBox/POPE, also used by LLaVA's
`eval_pope.py`. An answer is read as "no" when its first sentence (text before the first ".",
commas removed, split on single spaces) contains the word "No", "no" or "not"; anything else is
"yes". Quirks kept: "NO" or "no\\n" is read as "yes". "yes" is the positive class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PopeScores:
    """POPE's five numbers, as fractions in [0, 1] (precision/recall are 0 when undefined)."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float


def pope_answer_is_yes(answer: str) -> bool:
    """POPE's reading of a free-form answer: False when it says "no"/"not", else True."""
    first_sentence = answer.split(".")[0].replace(",", "")
    words = first_sentence.split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def _label_is_yes(label: str | bool, index: int) -> bool:
    if isinstance(label, bool):
        return label
    if isinstance(label, str) and label.strip().lower() in ("yes", "no"):
        return label.strip().lower() == "yes"
    raise ValueError(f"POPE label {index} must be 'yes', 'no' or a bool; got {label!r}")


def pope_scores(predictions: Sequence[str], labels: Sequence[str | bool]) -> PopeScores:
    """Scores of free-form answers against yes/no labels, one pair per question."""
    if len(predictions) != len(labels):
        raise ValueError(
            f"pope_scores needs one label per prediction; got {len(predictions)} predictions "
            f"and {len(labels)} labels"
        )
    if not predictions:
        raise ValueError("pope_scores needs at least one prediction")
    said_yes = [pope_answer_is_yes(answer) for answer in predictions]
    is_yes = [_label_is_yes(label, i) for i, label in enumerate(labels)]
    tp = sum(p and t for p, t in zip(said_yes, is_yes, strict=True))
    tn = sum(not p and not t for p, t in zip(said_yes, is_yes, strict=True))
    fp = sum(p and not t for p, t in zip(said_yes, is_yes, strict=True))
    fn = sum(not p and t for p, t in zip(said_yes, is_yes, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeScores(
        accuracy=(tp + tn) / len(predictions),
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=sum(said_yes) / len(predictions),
    )
