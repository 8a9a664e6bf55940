"""Mixtures: realised proportions match the strategy's probabilities, draws are deterministic in
(seed, epoch, step), and resuming from a saved state reproduces the same sequence; SPHINX
batches hold one data type each and are length-grouped."""

from collections import Counter

import numpy as np
import pytest

from sphinx_mllm.data.mixtures import (
    Mixture,
    MixtureSource,
    MixtureState,
    SphinxBatches,
    TypedSource,
)

SOURCES = [
    MixtureSource("vqa", 1000, 3.0),
    MixtureSource("rec", 200, 1.0),
    MixtureSource("caption", 50, 1.0),
]


@pytest.mark.parametrize(
    ("strategy", "options", "expected"),
    [
        ("fixed", {}, [0.6, 0.2, 0.2]),
        ("proportional", {}, [1000 / 1250, 200 / 1250, 50 / 1250]),
        ("capped", {"cap": 200}, [200 / 450, 200 / 450, 50 / 450]),
        (
            "temperature",
            {"temperature": 2.0},
            np.sqrt([1000, 200, 50]) / np.sqrt([1000, 200, 50]).sum(),
        ),
    ],
)
def test_realised_proportions_match_the_weights(strategy, options, expected):
    mixture = Mixture(SOURCES, strategy, seed=1, **options)
    assert mixture.probabilities == pytest.approx(expected)
    counts = Counter(name for name, _ in mixture.iterate(20_000))
    realised = [counts[source.name] / 20_000 for source in SOURCES]
    assert realised == pytest.approx(expected, abs=0.015)


def test_each_pass_over_a_source_is_a_permutation():
    mixture = Mixture([MixtureSource("only", 37)], seed=3)
    items = [index for _, index in mixture.iterate(74)]
    assert sorted(items[:37]) == list(range(37)) and sorted(items[37:]) == list(range(37))
    assert items[:37] != items[37:]


def test_draws_are_deterministic_and_resume_exactly():
    first = Mixture(SOURCES, "proportional", seed=5)
    reference = list(first.iterate(500, MixtureState(epoch=2)))
    state = MixtureState(epoch=2)
    head = list(Mixture(SOURCES, "proportional", seed=5).iterate(200, state))
    saved = state.to_dict()
    tail = list(
        Mixture(SOURCES, "proportional", seed=5).iterate(300, MixtureState.from_dict(saved))
    )
    assert head + tail == reference
    assert list(Mixture(SOURCES, "proportional", seed=6).iterate(50)) != reference[:50]


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="needs a positive cap"):
        Mixture(SOURCES, "capped")
    with pytest.raises(ValueError, match="Unknown mixture strategy 'uniformish'"):
        Mixture(SOURCES, "uniformish")
    with pytest.raises(ValueError, match="is empty"):
        MixtureSource("none", 0)
    with pytest.raises(ValueError, match="names must be unique"):
        Mixture([SOURCES[0], SOURCES[0]])


def test_sphinx_batches_are_single_type_length_grouped_and_deterministic():
    rng = np.random.default_rng(0)
    sources = [
        TypedSource("vqa", "image", rng.integers(10, 500, 300).tolist(), ratio=0.5),
        TypedSource("rec", "image", rng.integers(10, 500, 100).tolist()),
        TypedSource("refinedweb", "text", rng.integers(100, 2000, 200).tolist()),
    ]
    batcher = SphinxBatches(sources, batch_size=8, seed=1, window=4)
    batches = batcher.epoch(0)
    lengths = {s.name: s.lengths for s in sources}
    types = {s.name: s.data_type for s in sources}
    counted = Counter(name for _, batch in batches for name, _ in batch)
    assert counted == {"vqa": 150, "rec": 100, "refinedweb": 200}

    def mean_spread(batch_list):
        spreads = []
        for data_type, batch in batch_list:
            assert {types[name] for name, _ in batch} == {data_type}
            values = [lengths[name][index] for name, index in batch]
            spreads.append(max(values) - min(values))
        return np.mean(spreads)

    ungrouped = SphinxBatches(sources, batch_size=8, seed=1, window=1).epoch(0)
    assert mean_spread(batches) < 0.5 * mean_spread(ungrouped), "length grouping"
    assert batcher.epoch(0) == batches and batcher.epoch(1) != batches
    assert list(batcher.resume(0, 10)) == batches[10:]
