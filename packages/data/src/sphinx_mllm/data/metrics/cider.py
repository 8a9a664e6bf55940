"""CIDEr-D of captions: consensus with the references, weighted by how rare each n-gram is.

Source: Vedantam et al., "CIDEr: Consensus-based Image Description Evaluation" (CVPR 2015), as
implemented by the COCO caption evaluation (`pycocoevalcap/cider/cider_scorer.py`), which every
published COCO "CIDEr" uses and which is CIDEr-D: for n = 1..4, TF-IDF vectors of n-grams with
``idf = log(number of images) - log(max(1, document frequency over the references))``; the
candidate's vector clipped to the reference's (``min(hyp, ref) * ref``) over the product of
norms; a Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``, sigma 6; the mean over n
and over references, times 10. The penalty's lengths are word counts (the reference code
counts bigrams, which differs only for an empty sentence, whose score is 0 either way).
Document frequencies come from the references of the scored corpus, so with a single image
every weight is 0 and so is the score, as in the reference. Parity with
`pycocoevalcap.cider.Cider` on the same tokens is tested.

Why our own port rather than depending on pycocoevalcap: its wheel carries 100 MB of Java
(the PTB tokenizer, METEOR and SPICE jars) for 80 lines of Python used here. Tokenisation
replaces its Java PTB tokenizer with `tokenize`: lower-case, words of letters and digits
(apostrophes inside a word kept, "dog's" is one token where PTB splits "dog 's"), punctuation
dropped as PTB's post-processing drops it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

from sphinx_mllm.data.metrics.task_metric import (
    MetricResult,
    Record,
    TaskMetric,
    record_id,
    reference_reply,
)

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

NGram = tuple[str, ...]


def tokenize(text: str) -> str:
    """``"A dog's ball, on the grass."`` -> ``"a dog's ball on the grass"``."""
    return " ".join(_WORD.findall(text.lower()))


def cider_d(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, per-image scores) of tokenised `candidates` (words joined by spaces),
    one per image, each against its tokenised `references` (at least one per image)."""
    if len(candidates) != len(references):
        raise ValueError(
            f"cider_d needs one reference list per candidate; got {len(candidates)} candidates "
            f"and {len(references)} reference lists"
        )
    if not candidates:
        raise ValueError("cider_d needs at least one candidate")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"image {index} needs a list of at least one reference; got {refs!r}")
    tests = [_ngrams(candidate, n) for candidate in candidates]
    refs_counts = [[_ngrams(ref, n) for ref in refs] for refs in references]
    frequency: Counter[NGram] = Counter()
    for refs in refs_counts:
        frequency.update({gram for counts in refs for gram in counts})
    log_images = math.log(len(candidates))

    def vector(counts: Counter[NGram]) -> tuple[list[dict[NGram, float]], list[float], int]:
        vec: list[dict[NGram, float]] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        words = sum(tf for gram, tf in counts.items() if len(gram) == 1)
        return vec, norms, words

    scores = []
    for test, refs in zip(tests, refs_counts, strict=True):
        vec, norm, length = vector(test)
        total = 0.0
        for ref in refs:
            vec_ref, norm_ref, length_ref = vector(ref)
            penalty = math.exp(-((length - length_ref) ** 2) / (2 * sigma**2))
            for k in range(n):
                value = sum(min(w, vec_ref[k].get(g, 0.0)) * vec_ref[k].get(g, 0.0)
                            for g, w in vec[k].items())  # fmt: skip
                if norm[k] != 0 and norm_ref[k] != 0:
                    value /= norm[k] * norm_ref[k]
                total += value * penalty
        scores.append(total / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


def _ngrams(sentence: str, n: int) -> Counter[NGram]:
    words = sentence.split()
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


class Cider(TaskMetric):
    """CIDEr-D of caption replies over the corpus; references are `meta.references` (all
    captions of the image) when the record has them, else its reference reply."""

    name: ClassVar[str] = "cider"

    def __init__(self) -> None:
        self._candidates: list[str] = []
        self._references: list[list[str]] = []

    def add(self, prediction: str, record: Record) -> dict[str, float]:
        references = (record.get("meta") or {}).get("references")
        if references is None:
            references = [reference_reply(record)]
        if isinstance(references, str) or not references:
            raise ValueError(
                f"record {record_id(record)!r}: meta.references must be a list of at least one "
                f"caption; got {references!r}"
            )
        self._candidates.append(tokenize(prediction))
        self._references.append([tokenize(str(reference)) for reference in references])
        return {}

    def result(self) -> MetricResult:
        self._need_records(len(self._candidates))
        score, per_image = cider_d(self._candidates, self._references)
        return MetricResult(score, len(self._candidates), {}, tuple(per_image))
