"""mergekit configs run unchanged give mergekit's numbers: bit for bit on the golden outputs of
mergekit 0.1.5 (tests/llm/fixtures/mergekit, made by tests/llm/oracle/make_fixtures.py), for
every case, the seeded DARE ones included (their masks come from one stream in mergekit's order,
whatever the number of threads)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sphinx_mllm.llm.merging import load_config, run_merge
from tests.llm.merge_helpers import read_output

FIXTURES = Path(__file__).parent / "fixtures" / "mergekit"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["cases"]
CASES = sorted(MANIFEST)


@pytest.fixture
def in_fixtures(monkeypatch):
    monkeypatch.chdir(FIXTURES)  # mergekit resolves model paths against the working directory


def merge_case(case: str, out: Path, threads: int = 1) -> dict[str, torch.Tensor]:
    recipe = load_config(FIXTURES / case / "config.yml")
    options = MANIFEST[case].get("options") or []
    if "--random-seed" in options:
        recipe.seed = int(options[options.index("--random-seed") + 1])
    run_merge(recipe, out, threads=threads)
    return read_output(out)


@pytest.mark.parametrize("case", CASES)
def test_equals_mergekit_bit_for_bit(case, in_fixtures, tmp_path):
    ours = merge_case(case, tmp_path / "out", threads=3 if case.endswith("_seeded") else 1)
    theirs = load_file(str(FIXTURES / case / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for name, expected in theirs.items():
        assert ours[name].dtype == expected.dtype, name
        assert torch.equal(ours[name], expected), f"{case}: {name} differs"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (
        config["num_hidden_layers"]
        == json.loads((FIXTURES / case / "config.json").read_text())["num_hidden_layers"]
    )
