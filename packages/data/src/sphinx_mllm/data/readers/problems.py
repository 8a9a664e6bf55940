"""What a reader or builder does with a bad record: raise (the default, naming file and record),
or skip it and count why (`on_error="skip"`). The counts feed the summary of what was written
and dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from sphinx_mllm.data.readers.json_stream import AnnotationFormatError

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

    @property
    def total(self) -> int:
        return sum(self.skipped.values())
