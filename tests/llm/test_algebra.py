"""The merge algebra: exact arithmetic (fp32, fp64 on request, rounded once), folding of linear
terms so each input tensor is read once, methods inside expressions, and a safe text parser."""

import pytest
import torch

from sphinx_mllm.llm import get_merge_method
from sphinx_mllm.llm.merging import Gradient, MergeRecipe, Model, run_merge
from sphinx_mllm.llm.merging.expression import TensorContext
from sphinx_mllm.llm.merging.parse import ExpressionSyntaxError, parse_expression
from tests.llm.merge_helpers import llama_tensors, read_output, write_model

ties = get_merge_method("ties")
linear = get_merge_method("linear")


@pytest.fixture
def models(tmp_path):
    return {
        label: Model(write_model(tmp_path / label, llama_tensors(seed)), label)
        for label, seed in (("a", 1), ("b", 2), ("c", 3))
    }


def inputs(tmp_path, label):
    return llama_tensors({"a": 1, "b": 2, "c": 3}[label])


def merged(expression, out, **options):
    run_merge(MergeRecipe(expression, **options), out)
    return read_output(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_model_merged_with_itself_is_returned_bit_for_bit(tmp_path, dtype):
    a = Model(write_model(tmp_path / "a", llama_tensors(1, dtype)), "a")
    original = llama_tensors(1, dtype)
    for expression in (
        0.5 * a + 0.5 * a,
        0.25 * a + 0.75 * a,
        linear(models=[a, a], weight=[0.3, 0.7]),
    ):
        out = merged(expression, tmp_path / f"out{id(expression)}")
        assert all(torch.equal(out[name], original[name]) for name in original)


def test_linear_equals_the_hand_computed_fp32_result_rounded_once(tmp_path, models):
    out = merged(0.3 * models["a"] + 0.7 * models["b"], tmp_path / "out")
    a, b = inputs(tmp_path, "a"), inputs(tmp_path, "b")
    for name in a:
        expected = (a[name].float() * 0.3 + b[name].float() * 0.7).to(torch.bfloat16)
        assert torch.equal(out[name], expected), name


def test_float64_arithmetic_on_request(tmp_path):
    a = Model(write_model(tmp_path / "a", llama_tensors(1, torch.float32)), "a")
    b = Model(write_model(tmp_path / "b", llama_tensors(2, torch.float32)), "b")
    out = merged(
        a / 3 + b * (2 / 3), tmp_path / "out", compute_dtype=torch.float64, out_dtype=torch.float64
    )
    ta, tb = llama_tensors(1, torch.float32), llama_tensors(2, torch.float32)
    name = "model.layers.0.mlp.up_proj.weight"
    assert out[name].dtype == torch.float64
    assert torch.equal(out[name], ta[name].double() * (1 / 3) + tb[name].double() * (2 / 3))


def test_linear_terms_fold_so_each_input_is_read_once(models):
    a, b, c = models["a"], models["b"], models["c"]
    expression = a + 0.3 * (b - c) + 0.2 * (a - c)
    folded = {term.name: coefficient for coefficient, term in expression.linear_terms()}
    assert folded == pytest.approx({"a": 1.2, "b": 0.3, "c": -0.5})
    reads = []
    tensors = {label: torch.full((2, 2), float(i + 1)) for i, label in enumerate("abc")}
    context = TensorContext(
        "w", read=lambda model, name=None: reads.append(model.name) or tensors[model.name]
    )
    value = expression.evaluate(context)
    assert sorted(reads) == ["a", "b", "c"]
    assert torch.allclose(value, torch.full((2, 2), 1.2 * 1 + 0.3 * 2 - 0.5 * 3))


def test_a_method_inside_an_expression_reads_shared_inputs_once(models):
    a, b, c = models["a"], models["b"], models["c"]
    expression = 0.5 * a + 0.5 * ties(base=a, models=[b, c], weight=[1.0, 1.0], density=1.0)
    reads = []
    tensors = {label: torch.randn(3, 3) for label in "abc"}
    context = TensorContext(
        "w", read=lambda model, name=None: reads.append(model.name) or tensors[model.name]
    )
    expression.evaluate(context)
    assert sorted(reads) == ["a", "b", "c"]


def test_task_vector_expression_equals_the_hand_computation(tmp_path, models):
    a, b, c = models["a"], models["b"], models["c"]
    out = merged(a + 0.3 * (b - c), tmp_path / "out")
    ta, tb, tc = (inputs(tmp_path, label) for label in "abc")
    name = "model.layers.1.self_attn.q_proj.weight"
    expected = ta[name].float() * 1.0 + tb[name].float() * 0.3 + tc[name].float() * -0.3
    assert torch.equal(out[name], expected.to(torch.bfloat16))


def test_per_tensor_parameters_by_gradient_and_filter(tmp_path, models):
    from sphinx_mllm.llm.merging import Filtered

    a, b = models["a"], models["b"]
    weight_b = Filtered([("mlp", Gradient([0.0, 1.0]))], default=0.5)
    expression = linear(models=[a, b], weight=[1.0, weight_b], normalize=False)
    out = merged(expression, tmp_path / "out")
    ta, tb = inputs(tmp_path, "a"), inputs(tmp_path, "b")
    for name, factor in (
        ("model.layers.0.mlp.up_proj.weight", 0.0),
        ("model.layers.1.mlp.up_proj.weight", 1.0),
        ("model.layers.0.self_attn.q_proj.weight", 0.5),
    ):
        expected = (ta[name].float() + tb[name].float() * factor).to(torch.bfloat16)
        assert torch.equal(out[name], expected), name


def test_bad_algebra_is_refused(models):
    with pytest.raises(TypeError, match="adding a constant to every weight is not a merge"):
        _ = models["a"] + 1.0
    with pytest.raises(TypeError, match="divided by a non-zero number"):
        _ = models["a"] / 0
    with pytest.raises(ValueError, match="needs a base model"):
        ties(models=[models["a"]], weight=1.0)
    with pytest.raises(ValueError, match="has no parameter 'densty'"):
        ties(base=models["a"], models=[models["b"]], weight=1.0, densty=0.5)
    with pytest.raises(ValueError, match="weight has 1 values for 2 models"):
        linear(models=[models["a"], models["b"]], weight=[1.0])
    with pytest.raises(ValueError, match="parameter 'weight' is required"):
        linear(models=[models["a"], models["b"]])


def methods(name):
    return get_merge_method(name)


def test_text_expressions_parse_into_the_same_algebra(models):
    expression = parse_expression(
        "ties(base=a, models=[b, c], weight=[0.7, 0.3], density=gradient(0.2, 0.8))",
        models,
        methods,
    )
    assert expression.method.name == "ties"
    assert expression.model_parameters[1]["weight"] == 0.3
    folded = parse_expression("a + 0.3 * (b - a)", models, methods)
    assert {t.name: c for c, t in folded.linear_terms()} == pytest.approx({"a": 0.7, "b": 0.3})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('true')", "only calls of merge methods"),
        ("a.path", "Attribute is not allowed"),
        ("a + d", "unknown model name"),
        ("a ** 2", "only \\+ - \\* / are allowed"),
        ("a +", "Invalid merge expression"),
        ("lambda: a", "Lambda is not allowed"),
        ("0.5", "not a model"),
        ("nonexistent(models=[a])", "Unknown merge_method 'nonexistent'"),
    ],
)
def test_text_expressions_refuse_anything_else(models, text, message):
    with pytest.raises(ExpressionSyntaxError, match=message):
        parse_expression(text, models, methods)


def test_blockwise_merges_stream_in_blocks_and_equal_the_whole_tensor_merge(
    tmp_path, models, monkeypatch
):
    from sphinx_mllm.llm.merging import runner
    from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
    from sphinx_mllm.llm.merging.methods import slerp as slerp_module
    from sphinx_mllm.llm.merging.methods import task_arithmetic

    slerp = get_merge_method("slerp")
    a, b, c = models["a"], models["b"], models["c"]
    breadcrumbs = get_merge_method("breadcrumbs")
    select = {"ranking": "select"}
    expressions = {
        "slerp": slerp(base=a, models=[b], t=0.3),
        "nested": 0.5 * slerp(base=a, models=[b], t=0.3) + 0.5 * c,
        "ties": ties(base=a, models=[b, c], weight=[0.6, 0.4], density=0.3, **select),
        "breadcrumbs": breadcrumbs(base=a, models=[b, c], weight=0.5, density=0.6, **select),
        "ties in a sum": 0.5 * ties(base=a, models=[b, c], weight=0.5, density=0.5, **select)
        + 0.5 * slerp(base=c, models=[a], t=0.7),
    }
    whole = {
        key: merged(expression, tmp_path / f"whole_{key}")
        for key, expression in expressions.items()
    }
    largest_read = 0
    original_get, original_flat = ModelCheckpoint.get, ModelCheckpoint.get_flat

    def get(self, name, rows=None):
        nonlocal largest_read
        tensor = original_get(self, name, rows)
        largest_read = max(largest_read, tensor.numel())
        return tensor

    def get_flat(self, name, start, stop):
        nonlocal largest_read
        largest_read = max(largest_read, stop - start)
        return original_flat(self, name, start, stop)

    monkeypatch.setattr(ModelCheckpoint, "get", get)
    monkeypatch.setattr(ModelCheckpoint, "get_flat", get_flat)
    monkeypatch.setattr(runner, "BLOCK_ELEMENTS", 100)  # row blocks of 6 rows of 16
    monkeypatch.setattr(runner, "STREAM_ELEMENTS", 100)  # which tensors are streamed
    monkeypatch.setattr(slerp_module, "BLOCK", 70)  # statistics blocks across row blocks
    monkeypatch.setattr(task_arithmetic, "PREPARE_BLOCK", 50)
    for key, expression in expressions.items():
        assert expression.blockwise and not expression.elementwise
        run_merge(MergeRecipe(expression), tmp_path / f"streamed_{key}", threads=2)
        streamed = read_output(tmp_path / f"streamed_{key}")
        for name, tensor in whole[key].items():
            assert torch.equal(streamed[name], tensor), (key, name)
    assert largest_read <= 100  # the 64 x 16 embeddings never read whole
