"""Merge methods beyond the mergekit fixtures: the O(n) ranking against a stable sort (property
tests), the paper forms offered as options, and the methods' defining identities."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_mllm.llm import get_merge_method, list_merge_methods
from sphinx_mllm.llm.merging.expression import TensorContext
from sphinx_mllm.llm.merging.methods import rank_cut, sparsify
from sphinx_mllm.llm.merging.methods.task_arithmetic import sum_over_models

CONTEXT = TensorContext("model.layers.0.mlp.up_proj.weight", read=None, shape=None, seed=3)
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
@pytest.mark.parametrize("models", [1, 2, 3, 5])
def test_sum_over_models_equals_torch_sum_bit_for_bit(dtype, models):
    generator = torch.Generator().manual_seed(models)
    scales = torch.rand(models, 1, generator=generator) * 4
    values = (torch.randn(models, 300_001, generator=generator) * scales).to(dtype)
    result = sum_over_models(values)
    assert result.dtype == dtype
    assert torch.equal(result, values.sum(0))


@st.composite
def tied_tensors(draw):
    values = draw(st.lists(st.integers(-6, 6), min_size=1, max_size=200))
    dtype = draw(st.sampled_from(DTYPES))
    return torch.tensor(values, dtype=torch.float32).mul(0.125).to(dtype)


@settings(max_examples=300, deadline=None)
@given(tied_tensors(), st.floats(0, 1), st.floats(0, 1))
def test_selection_ranks_exactly_as_a_stable_sort(delta, low_fraction, width_fraction):
    count = delta.numel()
    low = int(low_fraction * count)
    high = low + int(width_fraction * (count - low))
    expected = torch.zeros(count, dtype=torch.bool)
    expected[torch.sort(delta.abs().float(), stable=True).indices[low:high]] = True
    assert torch.equal(sparsify._rank_range_mask(delta, low, high), expected)


@settings(max_examples=200, deadline=None)
@given(tied_tensors(), st.floats(0, 1), st.floats(0, 1), st.integers(1, 40), st.booleans())
def test_rank_cut_over_blocks_equals_the_stable_sort(
    delta, low_fraction, width_fraction, size, wide
):
    delta = delta.double() if wide else delta  # float64: four radix passes
    count = delta.numel()
    low = int(low_fraction * count)
    high = low + int(width_fraction * (count - low))
    keys = rank_cut.magnitude_keys(delta)
    blocks = list(keys.split(size))
    cut = rank_cut.find_rank_cut(lambda: iter(blocks), count, low, high, delta.element_size())
    offsets = [0, *torch.tensor([len(b) for b in blocks]).cumsum(0).tolist()[:-1]]
    mask = torch.cat(
        [cut.mask(block, offset) for block, offset in zip(blocks, offsets, strict=True)]
    )
    expected = torch.zeros(count, dtype=torch.bool)
    expected[torch.sort(delta.abs(), stable=True).indices[low:high]] = True
    assert torch.equal(mask, expected)


@settings(max_examples=200, deadline=None)
@given(tied_tensors(), st.floats(0.01, 0.99))
def test_select_keeps_the_same_magnitudes_as_sort(delta, density):
    by_sort = sparsify.magnitude(delta, density, "sort")
    by_select = sparsify.magnitude(delta, density, "select")
    assert sorted(by_sort.abs().float().tolist()) == sorted(by_select.abs().float().tolist())


def ties_params(**overrides):
    method = get_merge_method("ties")
    values = {p.name: p.default for p in method.parameters if not p.per_model}
    return {**values, **overrides}


def test_ties_select_equals_sort_without_ties_at_the_cut():
    torch.manual_seed(0)
    base, a, b = torch.randn(3, 64, 32).unbind(0)
    ties = get_merge_method("ties")
    models = [{"weight": 0.7, "density": 0.4}, {"weight": 0.3, "density": 0.4}]
    by_sort = ties.merge(base, [a, b], models, ties_params(ranking="sort"), CONTEXT)
    by_select = ties.merge(base, [a, b], models, ties_params(ranking="select"), CONTEXT)
    assert torch.equal(by_sort, by_select)


def test_ties_sign_election_paper_form_ignores_weights_when_electing():
    base = torch.zeros(3)
    a, b = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([-3.0, 2.0, 1.0])
    ties = get_merge_method("ties")
    models = [{"weight": 0.9, "density": 1.0}, {"weight": 0.1, "density": 1.0}]
    weighted = ties.merge(base, [a, b], models, ties_params(), CONTEXT)
    paper = ties.merge(base, [a, b], models, ties_params(sign_election="paper"), CONTEXT)
    # entry 0: weighted mass 0.9 - 0.3 > 0 elects +, the unweighted sum 1 - 3 < 0 elects -
    assert weighted[0] == pytest.approx(1.0) and paper[0] == pytest.approx(-3.0)
    assert torch.allclose(weighted[2], paper[2])


def test_dare_rescales_by_l1_or_by_inverse_density():
    delta = torch.linspace(-1, 1, 1000)
    generator = torch.Generator().manual_seed(0)
    kept = sparsify.random_drop(delta, 0.3, generator)
    assert 0.2 < (kept != 0).float().mean() < 0.4
    by_l1 = sparsify.rescale(delta, kept, 0.3, "l1")
    assert float(by_l1.abs().sum()) == pytest.approx(float(delta.abs().sum()), rel=1e-5)
    assert torch.equal(sparsify.rescale(delta, kept, 0.3, "inverse_density"), kept / 0.3)
    with pytest.raises(ValueError, match="Unknown rescale_by"):
        sparsify.rescale(delta, kept, 0.3, "l2")


def test_slerp_endpoints_and_linear_fallback():
    slerp = get_merge_method("slerp")
    torch.manual_seed(1)
    a, b = torch.randn(2, 40, 3).unbind(0)
    assert torch.allclose(slerp.merge(a, [b], [{}], {"t": 0.0}, CONTEXT), a, atol=1e-6)
    assert torch.allclose(slerp.merge(a, [b], [{}], {"t": 1.0}, CONTEXT), b, atol=1e-6)
    parallel = slerp.merge(a, [2 * a], [{}], {"t": 0.25}, CONTEXT)
    assert torch.allclose(parallel, 0.75 * a + 0.25 * (2 * a), atol=1e-6)
    middle = slerp.merge(a, [b], [{}], {"t": 0.5}, CONTEXT)
    cosine = torch.dot(a.flatten(), b.flatten()) / (a.norm() * b.norm())
    omega = torch.acos(cosine)
    expected = (torch.sin(0.5 * omega) / torch.sin(omega)) * (a + b)
    assert torch.allclose(middle, expected, atol=1e-5)


def test_model_stock_of_identical_fine_tunes_is_that_fine_tune():
    model_stock = get_merge_method("model_stock")
    torch.manual_seed(2)
    base, tuned = torch.randn(2, 16, 8).unbind(0)
    merged = model_stock.merge(
        base, [tuned, tuned.clone()], [{}, {}], {"filter_wise": False}, CONTEXT
    )
    assert torch.allclose(merged, tuned, atol=1e-5)  # cos = 1 -> t = 1


@pytest.mark.parametrize("name", list_merge_methods())
def test_every_method_describes_itself_and_rejects_unknown_parameters(name):
    method = get_merge_method(name)
    assert method.name == name and method.summary
    with pytest.raises(ValueError, match="has no parameter 'no_such_parameter'"):
        method.parameter("no_such_parameter")
