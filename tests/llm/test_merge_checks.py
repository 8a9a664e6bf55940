"""Nothing silently wrong: merges that would give NaN or infinite values, out-of-range or
mistyped parameters, include/exclude written as one string, broken reference configs and shard
indexes are refused with one line naming the input, exit status 2, and nothing written."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.llm import get_merge_method, list_merge_methods
from sphinx_mllm.llm.merging import MergeRecipe, Model, lora, run_merge
from sphinx_mllm.llm.merging import runner as runner_module
from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.llm.merging.cli import main as merge_cli
from sphinx_mllm.llm.merging.finite import NonFiniteError, all_finite
from sphinx_mllm.llm.merging.methods import slerp as slerp_module
from sphinx_mllm.llm.merging.methods.base import REQUIRED
from tests.llm.merge_helpers import llama_tensors, read_output, run_cli, write_model


@pytest.fixture
def models(tmp_path):
    write_model(tmp_path / "a", llama_tensors(1))
    write_model(tmp_path / "b", llama_tensors(2))
    return tmp_path


def refused(tmp_path, config_text, *options, out="out"):
    """Run the command on a config; assert status 2, one line naming the config, no output."""
    config = tmp_path / "merge.yml"
    config.write_text(config_text)
    code, errors = run_cli(config, tmp_path / out, "--no-progress", *options)
    assert code == 2, errors
    assert len(errors) == 1 and errors[0].startswith("sphinx-merge: ")
    assert not (tmp_path / out).exists() and not list(tmp_path.glob(f".{out}.partial-*"))
    return errors[0]


def mergekit(method, parameters, shared="", base=True):
    head = f"merge_method: {method}\n" + ("base_model: a\n" if base else "")
    return f"{head}models:\n- model: b\n  parameters: {{{parameters}}}\n{shared}"


def linear(weight_a, weight_b, extra=""):
    return (
        f"merge_method: linear\nmodels:\n- model: a\n  parameters: {{weight: {weight_a}}}\n"
        f"- model: b\n  parameters: {{weight: {weight_b}}}\n{extra}"
    )


# -- parameters: types and ranges, declared on each method, checked in one place --------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (linear('"half"', 1), r"parameter 'weight' for model 0 \(a\) is 'half', but it takes a "),
        (linear(".nan", 1), r"'weight' for model 0 \(a\) is nan, but it takes a finite number"),
        (
            mergekit("ties", 'weight: 1, density: "0.5"'),
            r"'density' .*\(b\) is '0.5'.* in \[0, 1\]",
        ),
        (mergekit("ties", "weight: 1, density: -0.3"), r"'density' .*\(b\) is -0.3.* in \[0, 1\]"),
        (mergekit("ties", "weight: 1, density: 1.5"), r"'density' .*\(b\) is 1.5.* in \[0, 1\]"),
        (mergekit("dare_ties", "weight: 1, density: -0.5"), r"dare_ties: parameter 'density'"),
        (mergekit("dare_linear", "weight: 1, density: -1"), r"dare_linear: parameter 'density'"),
        (
            mergekit("breadcrumbs", "weight: 1, density: 0.9, gamma: 0.5"),
            r"breadcrumbs: model 'b': density 0.9 \+ gamma 0.5 exceed 1",
        ),
        (mergekit("slerp", "", "parameters: {t: 2.5}\n"), r"'t' is 2.5, .* in \[0, 1\]"),
        (mergekit("slerp", "", "parameters: {t: .nan}\n"), r"'t' is nan"),
        (mergekit("slerp", "", "parameters: {t: [0, 1.5]}\n"), r"'t' is 1.5, .* in \[0, 1\]"),
        (
            mergekit("ties", "weight: 1, density: [{filter: mlp, value: 3}, {value: 0.5}]"),
            r"'density' .* is 3, but it takes a finite number in \[0, 1\]",
        ),
        (
            mergekit("ties", "weight: 1", "parameters: {normalize: 'yes'}\n"),
            r"'normalize' is 'yes', but it takes true or false",
        ),
        (
            mergekit("ties", "weight: 1", "parameters: {ranking: fast}\n"),
            r"'ranking' is 'fast', but it takes one of \['sort', 'select'\]",
        ),
        (
            "models: {a: a, b: b}\nmerge: ties(base=a, models=[b], weight=1, density=2)\n",
            r"In merge expression .*'density' for model 0 \(b\) is 2, .* in \[0, 1\]",
        ),
        (linear(1, -1), r"the weights \[1, -1\] of models \['a', 'b'\] sum to 0, and normalize"),
        (
            mergekit(
                "dare_linear",
                "weight: 1, density: 0",
                "parameters: {rescale_by: inverse_density}\n",
            ),
            r"model 'b': density 0 with rescale_by inverse_density divides by 0",
        ),
    ],
)
def test_bad_parameters_are_refused_naming_parameter_model_and_range(
    models, monkeypatch, text, expected
):
    monkeypatch.chdir(models)
    line = refused(models, text)
    assert str(models / "merge.yml") in line
    assert __import__("re").search(expected, line), line


def test_weights_summing_to_0_for_some_layers_are_refused_naming_those_tensors(models, monkeypatch):
    monkeypatch.chdir(models)
    line = refused(models, linear("[1, 1]", "[1, -1]"))  # sums 2 at layer 0, 0 at layer 1
    assert "the weights [1.0, -1.0] of models ['a', 'b'] sum to 0" in line
    assert "(for tensor 'model.layers.1.input_layernorm.weight' and 8 more)" in line


@pytest.mark.parametrize("name", list_merge_methods())
def test_every_parameter_declares_what_it_accepts_and_its_default_fits(name):
    for parameter in get_merge_method(name).parameters:
        assert parameter.kind != "any", f"{name}.{parameter.name} declares no kind"
        if parameter.default is not REQUIRED:
            assert parameter.problem(parameter.default) is None, (name, parameter.name)
        for bad in ("text", float("nan"), [1, 2]):
            assert parameter.problem(bad) is not None, (name, parameter.name, bad)


# -- non-finite values --------------------------------------------------------------------------


def test_a_nan_in_an_input_is_refused_naming_file_tensor_and_model(models):
    tensors = llama_tensors(3)
    tensors["model.layers.1.mlp.up_proj.weight"][5, 3] = float("nan")
    write_model(models / "c", tensors)
    line = refused(models, "models: {a: a, c: c}\nmerge: 0.5 * a + 0.5 * c\n")
    assert line == (
        f"sphinx-merge: {models / 'c' / 'model.safetensors'}: tensor "
        "'model.layers.1.mlp.up_proj.weight' of model 'c' holds NaN or infinite values; a merge "
        "of it would too"
    )


def test_an_inf_late_in_a_streamed_slerp_input_is_blamed_on_that_input(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "BLOCK_ELEMENTS", 100)
    monkeypatch.setattr(runner_module, "STREAM_ELEMENTS", 100)
    monkeypatch.setattr(slerp_module, "BLOCK", 70)
    tensors = llama_tensors(2)
    tensors["model.embed_tokens.weight"][-1, -1] = float("inf")  # only the last row block
    a = Model(write_model(tmp_path / "a", llama_tensors(1)), "a")
    b = Model(write_model(tmp_path / "b", tensors), "b")
    merge = get_merge_method("slerp")(base=a, models=[b], t=0.5)
    with pytest.raises(NonFiniteError, match=r"tensor 'model\.embed_tokens\.weight' of model 'b'"):
        run_merge(MergeRecipe(merge), tmp_path / "out", threads=2)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_results_that_overflow_the_output_dtype_are_refused(tmp_path):
    big = {name: tensor.float() * 1e5 for name, tensor in llama_tensors(1).items()}
    a = Model(write_model(tmp_path / "a", big), "a")
    b = Model(write_model(tmp_path / "b", big), "b")
    recipe = MergeRecipe(0.5 * a + 0.5 * b, out_dtype=torch.float16)
    with pytest.raises(NonFiniteError, match=r"although its inputs are finite.*float16 can hold"):
        run_merge(recipe, tmp_path / "out")
    copied = MergeRecipe(0.5 * a + 0.5 * b, exclude=["*"], out_dtype=torch.float16)
    with pytest.raises(NonFiniteError, match="overflows float16"):
        run_merge(copied, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_inputs_that_overflow_the_mergekit_load_dtype_are_named(tmp_path, monkeypatch):
    big = {name: tensor.float() * 1e5 for name, tensor in llama_tensors(1).items()}
    write_model(tmp_path / "a", big)
    write_model(tmp_path / "b", big)
    monkeypatch.chdir(tmp_path)
    line = refused(tmp_path, linear(0.5, 0.5, "dtype: float16\n"))
    assert "of model 'a' overflows float16, a dtype it is cast to" in line


def test_a_nan_lora_factor_is_refused_naming_the_factor(tmp_path):
    base = Model(write_model(tmp_path / "base", llama_tensors(1)), "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    factor_b = torch.zeros(16, 2)
    factor_b[0, 0] = float("nan")
    save_file(
        {f"{module}.lora_A.weight": torch.ones(2, 16), f"{module}.lora_B.weight": factor_b},
        str(adapter / "adapter_model.safetensors"),
    )
    with pytest.raises(NonFiniteError, match=f"LoRA factor '{module}.lora_B.weight' holds NaN"):
        run_merge(MergeRecipe(base + lora(adapter)), tmp_path / "out")


def test_finiteness_is_checked_exactly():
    values = torch.randn(3000).to(torch.bfloat16)
    assert all_finite(values) and all_finite(values, torch.float16)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = values.clone()
        broken[2500] = bad
        assert not all_finite(broken)
    assert not all_finite(torch.tensor([1.0, 65520.0]), torch.float16)  # rounds to inf
    assert all_finite(torch.tensor([1, 2]))  # integers are always finite


# -- include / exclude, reference config, shard index -------------------------------------------


def test_include_and_exclude_given_as_one_string_are_one_pattern(models):
    config = models / "merge.yml"
    config.write_text("models: {a: a, b: b}\nmerge: 0.5 * a + 0.5 * b\nexclude: 'lm_head*'\n")
    code, _ = run_cli(config, models / "out", "--no-progress")
    assert code == 0
    out, a, b = read_output(models / "out"), llama_tensors(1), llama_tensors(2)
    assert torch.equal(out["lm_head.weight"], a["lm_head.weight"])
    name = "model.norm.weight"
    assert torch.equal(out[name], (a[name].float() * 0.5 + b[name].float() * 0.5).bfloat16())
    assert MergeRecipe(Model(models / "a"), include="model.*").include == ("model.*",)
    assert "exclude: expected a shell wildcard" in refused(
        models, "models: {a: a}\nmerge: a\nexclude: {lm_head: 1}\n", out="o2"
    )


def test_a_pattern_that_matches_nothing_is_reported(models, capsys):
    config = models / "merge.yml"
    config.write_text("models: {a: a, b: b}\nmerge: 0.5 * a + 0.5 * b\nexclude: ['lm_haed*']\n")
    for options in (["--dry-run"], ["--no-progress"]):
        assert merge_cli([str(config), str(models / "out"), *options]) == 0
        assert "note: exclude pattern 'lm_haed*' matches no tensor" in capsys.readouterr().out


def test_excluding_everything_with_nothing_copied_is_refused(models):
    line = refused(models, "models: {a: a, b: b}\nmerge: a + b\nexclude: ['*']\ncopy_from: null\n")
    assert "nothing to write: every tensor of 'a' is excluded" in line


@pytest.mark.parametrize(
    ("config_json", "expected"),
    [
        ('{"model_type": "llama",', "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, not list"),
        ('{"num_hidden_layers": "two"}', "num_hidden_layers is 'two'; expected an integer >= 1"),
        ('{"torch_dtype": 16}', "torch_dtype is 16; expected a string or null"),
    ],
)
def test_a_broken_reference_config_is_refused_before_any_work(models, config_json, expected):
    (models / "a" / "config.json").write_text(config_json)
    line = refused(models, "models: {a: a, b: b}\nmerge: 0.5 * a + 0.5 * b\n")
    assert f"{models / 'a' / 'config.json'}" in line and expected in line


def sharded(directory, weight_map):
    """Model `directory` stored as one shard with an index holding `weight_map` edits."""
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    names = {name: "model-00001-of-00001.safetensors" for name in llama_tensors(2)}
    index = {"metadata": {}, "weight_map": {**names, **weight_map}}
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v is not None}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory / "model.safetensors.index.json"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"lm_head.weight": "../a/model.safetensors"}, "names the shard '../a/model.safetensors'"),
        ({"ghost.weight": "model-00001-of-00001.safetensors"}, "entry 'ghost.weight' names"),
        ({"lm_head.weight": None}, "tensor 'lm_head.weight' is stored in model-00001-of-00001"),
    ],
)
def test_a_shard_index_that_disagrees_with_its_shards_is_refused(models, edit, expected):
    index = sharded(models / "b", edit)
    with pytest.raises(CheckpointError, match=r"index\.json: "):
        ModelCheckpoint(models / "b")
    line = refused(models, "models: {a: a, b: b}\nmerge: 0.5 * a + 0.5 * b\n")
    assert str(index) in line and expected in line


# -- inputs that used to crash --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n"
            "    layer_range: [0, 5]\n",
            "slice layer_range [0, 5] of 'a' goes beyond its 2 layers",
        ),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n    layer_range: 3\n",
            "layer_range of 'a' is 3; expected [start, end]",
        ),
        (
            "merge_method: linear\nmodels:\n- model: a\n  parameters:\n    weight:\n"
            "    - filter: mlp\n- model: b\n  parameters: {weight: 1}\n",
            "parameter 'weight': a filter entry is {filter: PATTERN, value: VALUE}",
        ),
        (
            "merge_method: linear\nmodels:\n- model: a\n  parameters: [weight, 1]\n",
            "the parameters of 'a' must map parameter names to values",
        ),
        ("merge_method: [linear]\nmodels:\n- model: a\n", "merge_method: expected a method name"),
        ("models: {a: a}\nmerge: a\nseed: 1.5\n", "seed: 1.5 is not an integer"),
        ("models: {a: a}\nmerge: a\ncompute_dtype: float16\n", "compute_dtype: 'float16' is not"),
        ("models: {a: a}\nmerge: a * 'x'\n", "only numbers and models combine"),
        ("models: {a: a}\nmerge: 1e308 * 10 * a\n", "multiplied by a finite number, not inf"),
    ],
)
def test_inputs_that_used_to_crash_are_one_line_errors(models, monkeypatch, text, expected):
    monkeypatch.chdir(models)
    line = refused(models, text)
    assert str(models / "merge.yml") in line and expected in line


def test_a_corrupt_header_is_a_one_line_error_naming_file_and_tensor(models):
    header = json.dumps({"x": {"dtype": "F32", "shape": [1]}}).encode()
    header += b" " * (-len(header) % 8)
    weights = models / "b" / "model.safetensors"
    weights.write_bytes(len(header).to_bytes(8, "little") + header)
    line = refused(models, "models: {a: a, b: b}\nmerge: 0.5 * a + 0.5 * b\n")
    assert line == (
        f"sphinx-merge: {weights} has a corrupt safetensors header: tensor 'x' lacks "
        "['data_offsets']"
    )
