"""mergekit configs run unchanged give mergekit's numbers: bit for bit on the golden outputs of
mergekit 0.1.5 (tests/llm/fixtures/mergekit, made by tests/llm/oracle/make_fixtures.py), for
every deterministic case. Seeded DARE draws its masks from another random stream (ours is
seeded per tensor, independent of thread count): its statistics are checked instead."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sphinx_mllm.llm.merging import load_config, run_merge
from tests.llm.merge_helpers import read_output

FIXTURES = Path(__file__).parent / "fixtures" / "mergekit"
CASES = sorted(json.loads((FIXTURES / "manifest.json").read_text())["cases"])
SEEDED = [case for case in CASES if case.endswith("_seeded")]


@pytest.fixture
def in_fixtures(monkeypatch):
    monkeypatch.chdir(FIXTURES)  # mergekit resolves model paths against the working directory


def merge_case(case: str, out: Path) -> dict[str, torch.Tensor]:
    run_merge(load_config(FIXTURES / case / "config.yml"), out)
    return read_output(out)


@pytest.mark.parametrize("case", [case for case in CASES if case not in SEEDED])
def test_equals_mergekit_bit_for_bit(case, in_fixtures, tmp_path):
    ours = merge_case(case, tmp_path / "out")
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


@pytest.mark.parametrize("case", SEEDED)
def test_seeded_dare_keeps_the_density_and_the_l1_norm(case, in_fixtures, tmp_path):
    ours = merge_case(case, tmp_path / "out")
    theirs = load_file(str(FIXTURES / case / "model.safetensors"))
    base = load_file(str(FIXTURES / "models" / "base" / "model.safetensors"))
    changed_ours = sum(int((ours[n] != base[n]).sum()) for n in base)
    changed_theirs = sum(int((theirs[n] != base[n]).sum()) for n in base)
    assert abs(changed_ours - changed_theirs) / changed_theirs < 0.05
    distance_ours = sum(float((ours[n].float() - base[n].float()).abs().sum()) for n in base)
    distance_theirs = sum(float((theirs[n].float() - base[n].float()).abs().sum()) for n in base)
    assert abs(distance_ours - distance_theirs) / distance_theirs < 0.05
