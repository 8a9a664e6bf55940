"""Running merges: the output directory, provenance, checks before anything is written, clear
errors for bad inputs, the command line, determinism, and what a killed merge leaves behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.llm import get_merge_method
from sphinx_mllm.llm.merging import MergePlanError, MergeRecipe, Model, run_merge
from sphinx_mllm.llm.merging.cli import main as merge_cli
from tests.llm.merge_helpers import llama_tensors, read_output, write_model

SPHINX_MIX = """
models:
  real: real
  syn: syn
merge: 0.5 * real + 0.5 * syn
"""


@pytest.fixture
def two_models(tmp_path):
    real = Model(write_model(tmp_path / "real", llama_tensors(1)), "real")
    syn = Model(write_model(tmp_path / "syn", llama_tensors(2)), "syn")
    return real, syn


def test_output_is_sharded_with_an_index_config_tokenizer_and_provenance(tmp_path, two_models):
    real, syn = two_models
    report = run_merge(MergeRecipe(0.5 * real + 0.5 * syn), tmp_path / "out", shard_size=4096)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert report.shards == len(shards) > 1
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert sorted(index["weight_map"]) == sorted(llama_tensors(1))
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    with safe_open(str(shards[0]), framework="pt") as handle:
        metadata = handle.metadata()
    inputs = json.loads(metadata["sphinx_merge_inputs"])
    assert set(inputs) == {"real", "syn"} and len(inputs["real"]["fingerprint"]) == 64
    assert "0.5 * Model('real')" in json.loads(metadata["sphinx_merge_recipe"])["expression"]
    assert not list(tmp_path.glob(".out.partial-*"))


def test_an_existing_output_is_refused_unless_forced(tmp_path, two_models):
    real, syn = two_models
    run_merge(MergeRecipe(0.5 * real + 0.5 * syn), tmp_path / "out")
    with pytest.raises(FileExistsError, match="pass --force"):
        run_merge(MergeRecipe(0.5 * real + 0.5 * syn), tmp_path / "out")
    run_merge(MergeRecipe(0.25 * real + 0.75 * syn), tmp_path / "out", force=True)
    name = "model.norm.weight"
    expected = llama_tensors(1)[name].float() * 0.25 + llama_tensors(2)[name].float() * 0.75
    assert torch.equal(read_output(tmp_path / "out")[name], expected.to(torch.bfloat16))


def test_include_exclude_and_copy_from(tmp_path, two_models):
    real, syn = two_models
    recipe = MergeRecipe(
        0.5 * real + 0.5 * syn, exclude=["lm_head.*", "model.embed_tokens.*"], copy_from=syn
    )
    out = read_output(run_merge(recipe, tmp_path / "out").output)
    assert torch.equal(out["lm_head.weight"], llama_tensors(2)["lm_head.weight"])
    skipped = run_merge(
        MergeRecipe(0.5 * real + 0.5 * syn, exclude=["lm_head.*"], copy_from=None), tmp_path / "o2"
    )
    assert "lm_head.weight" not in read_output(skipped.output)
    assert (skipped.plan.count("merge"), skipped.plan.count("skip")) == (20, 1)


def test_every_problem_is_listed_before_anything_is_written(tmp_path):
    base = Model(write_model(tmp_path / "base", llama_tensors(1)), "base")
    broken = llama_tensors(2)
    del broken["model.layers.0.mlp.up_proj.weight"]
    broken["model.layers.1.mlp.down_proj.weight"] = torch.zeros(3, 3, dtype=torch.bfloat16)
    broken["model.extra.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    other = Model(write_model(tmp_path / "other", broken), "other")
    with pytest.raises(MergePlanError) as raised:
        run_merge(MergeRecipe(0.5 * base + 0.5 * other), tmp_path / "out")
    message = str(raised.value)
    assert "3 problem(s)" in message
    assert "tensor 'model.layers.0.mlp.up_proj.weight': missing in model 'other'" in message
    assert (
        "tensor 'model.layers.1.mlp.down_proj.weight': shape (3, 3) in 'other', (16, 32) in 'base'"
        in message
    )
    assert (
        "tensor 'model.extra.weight': in 'other' but not in the reference model 'base'" in message
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_truncated_and_corrupt_files_and_missing_shards_are_clear_errors(tmp_path, two_models):
    real, syn = two_models
    weights = Path(syn.path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="is truncated"):
        run_merge(MergeRecipe(0.5 * real + 0.5 * syn), tmp_path / "out")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        run_merge(MergeRecipe(0.5 * real + 0.5 * syn), tmp_path / "out")
    weights.unlink()
    (Path(syn.path) / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(
        CheckpointError,
        match=r"names shards that do not exist: \['model-00001-of-00002.safetensors'\]",
    ):
        run_merge(MergeRecipe(0.5 * real + 0.5 * syn), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pickles_need_an_explicit_opt_in(tmp_path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    torch.save(llama_tensors(1), directory / "pytorch_model.bin")
    model = Model(directory, "pickled")
    with pytest.raises(FileNotFoundError, match="No weights in"):
        run_merge(MergeRecipe(1.0 * model), tmp_path / "out")
    report = run_merge(MergeRecipe(1.0 * model), tmp_path / "out", allow_pickle=True)
    assert torch.equal(
        read_output(report.output)["lm_head.weight"], llama_tensors(1)["lm_head.weight"]
    )


@pytest.mark.parametrize("threads", [1, 3])
def test_dare_is_the_same_for_the_same_seed_whatever_the_threads(tmp_path, threads):
    base, a, b = (
        Model(write_model(tmp_path / n, llama_tensors(s)), n)
        for n, s in (("base", 1), ("a", 2), ("b", 3))
    )
    dare = get_merge_method("dare_ties")(base=base, models=[a, b], weight=[0.6, 0.4], density=0.5)
    first = read_output(run_merge(MergeRecipe(dare, seed=7), tmp_path / "one", threads=1).output)
    again = read_output(
        run_merge(MergeRecipe(dare, seed=7), tmp_path / "two", threads=threads).output
    )
    other = read_output(
        run_merge(MergeRecipe(dare, seed=8), tmp_path / "three", threads=threads).output
    )
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def write_config(tmp_path, text):
    config = tmp_path / "merge.yml"
    config.write_text(text)
    return config


def test_the_command_merges_our_config_and_reports(tmp_path, two_models, capsys):
    config = write_config(tmp_path, SPHINX_MIX)
    assert (
        merge_cli([str(config), str(tmp_path / "out"), "--no-progress", "--out-dtype", "float32"])
        == 0
    )
    assert "21 tensors: 21 merged, 0 copied, 0 skipped by rule" in capsys.readouterr().out
    out = read_output(tmp_path / "out")
    a, b = llama_tensors(1), llama_tensors(2)
    name = "model.norm.weight"
    assert torch.equal(out[name], a[name].float() * 0.5 + b[name].float() * 0.5)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"


def test_dry_run_lists_every_tensor_and_writes_nothing(tmp_path, two_models, capsys):
    config = write_config(tmp_path, SPHINX_MIX + "exclude: ['lm_head.*']\n")
    assert merge_cli([str(config), str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "merge model.layers.0.mlp.up_proj.weight [32, 16] -> bfloat16" in printed
    assert (
        "copy  lm_head.weight [64, 16] -> bfloat16 from real (excluded from the merge)" in printed
    )
    assert "estimated peak working memory" in printed
    assert not (tmp_path / "out").exists()


def mergekit_ties(model_parameters: str, top: str = "") -> str:
    return (
        f"merge_method: ties\nbase_model: real\n{top}models:\n"
        f"  - model: syn\n    parameters: {{{model_parameters}}}\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SPHINX_MIX + "colour: blue\n", "Unknown keys \\['colour'\\]"),
        (mergekit_ties("weight: 1, densty: 0.5"), "has no parameter 'densty'"),
        (mergekit_ties("weight: 1, lambda: 0.5"), "'lambda' is a shared parameter"),
        (
            mergekit_ties("weight: 1", "parameters: {consensus_method: count}\n"),
            "no parameter 'consensus_method'",
        ),
        (
            "merge_method: slerp\nbase_model: real\nmodels:\n  - model: syn\n",
            "parameter 't' is required",
        ),
        ("models: {real: real}\nmerge: real + nowhere\n", "unknown model name"),
        ("models: {real: real, ghost: ./ghost}\nmerge: real\n", "Model './ghost' not found"),
    ],
)
def test_bad_configs_exit_with_status_2_and_leave_nothing(
    tmp_path, two_models, capsys, monkeypatch, text, message
):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, text)
    assert merge_cli([str(config), str(tmp_path / "out"), "--no-progress"]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


KILL_SCRIPT = "from sphinx_mllm.llm.merging.cli import main_entry; main_entry()"


@pytest.mark.slow
def test_a_merge_killed_at_any_moment_leaves_nothing_that_looks_finished(tmp_path):
    big = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(512, 512) for i in range(60)}
    for label, seed in (("real", 1), ("syn", 2)):
        torch.manual_seed(seed)
        write_model(tmp_path / label, {n: torch.randn_like(t) for n, t in big.items()}, layers=60)
    config = write_config(tmp_path, SPHINX_MIX)
    command = [
        sys.executable,
        "-c",
        KILL_SCRIPT,
        str(config),
        str(tmp_path / "out"),
        "--no-progress",
        "--shard-size",
        "2MB",
        "--threads",
        "1",
    ]
    for delay in (0.0, 0.3, 0.8):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (
            not list(tmp_path.glob(".out.partial-*/*.safetensors")) and time.monotonic() < deadline
        ):
            if process.poll() is not None:
                break
            time.sleep(0.005)
        time.sleep(delay / 10)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert not (tmp_path / "out").exists(), (
            f"a complete-looking output after SIGKILL (delay {delay})"
        )
    assert subprocess.run(command, check=False).returncode == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert not list(tmp_path.glob(".out.partial-*")), (
        "abandoned partial outputs are cleaned up by the next run"
    )
    assert len(read_output(tmp_path / "out")) == 60


def test_the_command_keeps_freed_block_buffers_on_glibc():
    # in a child process: the allocator setting is process-wide
    import platform
    import subprocess
    import sys

    code = "from sphinx_mllm.llm.merging.allocator import reuse_freed_memory as r; print(r())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert result.stdout.strip() == str(glibc)
