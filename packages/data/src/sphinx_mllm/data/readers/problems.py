"""What a reader or builder does with a bad record: raise (the default, naming file and record),
or skip it and count why (`on_error="skip"`). The counts feed the summary of what was written
and dropped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from sphinx_mllm.data.readers.checks import RecordProblem
from sphinx_mllm.data.readers.json_stream import AnnotationFormatError

Parsed = TypeVar("Parsed")

OnError = Literal["raise", "skip"]


@dataclass
class Problems:
    """The policy for bad records and the count of skipped ones, by reason."""

    on_error: OnError = "raise"
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def report(self, where: str, reason: str) -> None:
        """Raise, or count the record as skipped for `reason`."""
        if self.on_error == "raise":
            raise AnnotationFormatError(f"{where}: {reason}")
        self.skipped[reason] += 1

    def attempt(
        self, where: str, parse: Callable[..., Parsed], *arguments: object
    ) -> Parsed | None:
        """`parse(*arguments)`, or None when it raises `RecordProblem` (reported for `where`:
        raised, or counted as skipped)."""
        try:
            return parse(*arguments)
        except RecordProblem as problem:
            self.report(where, str(problem))
            return None

    @property
    def total(self) -> int:
        return sum(self.skipped.values())
