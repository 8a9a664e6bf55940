"""The shared random stream lends its generator tensor by tensor in the given order, whatever
order the workers ask in, and a cancelled merge releases every waiting worker."""

import threading
import time

import pytest
import torch

from sphinx_mllm.llm.merging.random_stream import OrderedRandomStream, StreamCancelled


def test_turns_follow_the_order_whatever_order_the_workers_ask_in():
    order = [f"t{index}" for index in range(8)]
    stream = OrderedRandomStream(42, order)
    drawn: dict[str, torch.Tensor] = {}
    served: list[str] = []

    def draw(name: str) -> None:
        with stream.turn(name) as generator:
            served.append(name)
            drawn[name] = torch.rand(3, generator=generator)

    workers = [threading.Thread(target=draw, args=(name,)) for name in reversed(order)]
    for worker in workers:  # the last asks first
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert served == order
    expected = torch.Generator().manual_seed(42)
    for name in order:
        assert torch.equal(drawn[name], torch.rand(3, generator=expected))


def test_cancel_releases_waiting_workers():
    stream = OrderedRandomStream(0, ["first", "second"])
    errors = []

    def wait_for_second() -> None:
        try:
            with stream.turn("second"):
                pass
        except StreamCancelled as error:
            errors.append(error)

    worker = threading.Thread(target=wait_for_second)
    worker.start()
    time.sleep(0.05)  # "first" never comes: the merge failed on it
    stream.cancel()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert len(errors) == 1 and "second" in str(errors[0])
    with pytest.raises(KeyError, match="no turn"), stream.turn("unknown"):
        pass
