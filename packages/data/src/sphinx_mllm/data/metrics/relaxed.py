"""Relaxed accuracy of ChartQA: numbers may be off by 5% relative error, text must match exactly.

Source: Methani et al. 2020 via Pix2Struct (`google-research/pix2struct`, `metrics.py`,
`relaxed_correctness`), which SPHINX's evaluation copies. Quirks kept: "12%" reads as 0.12; a
target of 0 is never numeric (Pix2Struct tests `if target_float:`), so it needs the exact
string; text is compared case-insensitively but otherwise verbatim (ends stripped). SPHINX's
script calls the function with prediction and target swapped, so its relative error is taken
against the prediction; here it is against the target, as in Pix2Struct.
"""

from __future__ import annotations

from collections.abc import Sequence


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """Whether `prediction` is within `max_relative_change` of a numeric `target`, or equal."""
    prediction, target = prediction.strip(), target.strip()
    predicted, expected = _to_float(prediction), _to_float(target)
    if predicted is not None and expected:
        return abs(predicted - expected) / abs(expected) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(
    prediction: str, targets: str | Sequence[str], max_relative_change: float = 0.05
) -> float:
    """1.0 when the prediction is relaxed-correct for the (or any) target, else 0.0."""
    references = [targets] if isinstance(targets, str) else list(targets)
    if not references:
        raise ValueError(f"relaxed_accuracy needs at least one target for {prediction!r}")
    return float(any(relaxed_correctness(prediction, t, max_relative_change) for t in references))
