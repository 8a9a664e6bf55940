"""One random stream shared by all tensors, drawn tensor by tensor in a fixed order: how mergekit
draws DARE's masks, so that a seeded mergekit config gives mergekit's masks.

mergekit seeds torch's global generator once (`--random-seed`) and processes the tensors one at
a time in lexicographic order of name, each non-base model drawing one Bernoulli tensor (tests/llm/
oracle/MERGEKIT_SEMANTICS.md, section 4.3). Our own configs seed each tensor from its name
instead (`methods.base.tensor_generator`), which needs no order at all. With this stream the
tensors that draw take turns: a worker computing one waits until every tensor before it in the
order is done, so the masks are the same for any number of threads (the draws, and the tensors
holding them, are serialised; reading and writing still overlap).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


class StreamCancelled(RuntimeError):
    """The merge stopped while a tensor waited for its turn."""


class OrderedRandomStream:
    """A generator seeded once, lent to the tensors of `order` one after the other."""

    def __init__(self, seed: int, order: Sequence[str]) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self._position = {name: index for index, name in enumerate(order)}
        self._next = 0
        self._cancelled = False
        self._changed = threading.Condition()

    @contextmanager
    def turn(self, name: str) -> Iterator[torch.Generator]:
        """Wait until every tensor before `name` is done, lend the generator, then pass on."""
        if name not in self._position:
            raise KeyError(f"{name!r} has no turn in the random stream")
        position = self._position[name]
        with self._changed:
            self._changed.wait_for(lambda: self._cancelled or self._next == position)
            if self._cancelled:
                raise StreamCancelled(f"the merge stopped while {name!r} waited for its turn")
        try:
            yield self.generator
        finally:
            with self._changed:
                self._next = position + 1
                self._changed.notify_all()

    def cancel(self) -> None:
        """Release every waiting tensor with `StreamCancelled` (the merge is failing)."""
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()
