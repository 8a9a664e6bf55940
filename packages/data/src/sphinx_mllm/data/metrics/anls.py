"""ANLS, the Average Normalised Levenshtein Similarity of ST-VQA, DocVQA and InfographicVQA.

Source: Biten et al., "Scene Text Visual Question Answering" (ICCV 2019), and the DocVQA
evaluation. Per question the score is ``max over answers of s``, where ``NL`` is the edit distance
divided by the longer string's length and ``s = 1 - NL`` when ``NL < threshold`` (0.5), else 0.
Strings are compared stripped, lower-cased and with runs of whitespace collapsed. At exactly
``NL = 0.5`` the paper gives 0; some reimplementations (lmms-eval) keep 0.5. The dataset score is
the mean over questions.
"""

from __future__ import annotations

from collections.abc import Sequence


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit-cost insertion, deletion and substitution."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def _normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def normalized_levenshtein(a: str, b: str) -> float:
    """Edit distance over the longer length, after ANLS normalisation; 0 for two empty strings."""
    a, b = _normalize(a), _normalize(b)
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def anls(prediction: str, answers: str | Sequence[str], threshold: float = 0.5) -> float:
    """The ANLS score of one prediction against its reference answers, in [0, 1]."""
    references = [answers] if isinstance(answers, str) else list(answers)
    if not references:
        raise ValueError(f"anls needs at least one answer for {prediction!r}")
    best = min(normalized_levenshtein(prediction, answer) for answer in references)
    return 1.0 - best if best < threshold else 0.0
