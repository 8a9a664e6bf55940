"""Every registry of every package: built-ins come from their own entry points, listing builds
nothing, and each kind is listed by the `sphinx-pipeline components` command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sphinx_mllm.pipeline import ALL_REGISTRIES, describe_components
from tests.integration.package_sources import PACKAGES

EXPECTED_KINDS = {
    "encoders",
    "mixers",
    "projectors",
    "view_splitters",
    "merge_methods",
    "language_models",
    "task_builders",
    "chat_templates",
    "model_presets",
}


def test_one_registry_per_kind():
    assert set(ALL_REGISTRIES) == EXPECTED_KINDS


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_declared_entry_points_are_listed_as_the_declaring_distribution(module):
    package = PACKAGES[module]
    for group, entries in package.pyproject["project"].get("entry-points", {}).items():
        kind = group.removeprefix("sphinx_mllm_")
        assert kind in ALL_REGISTRIES, f"{package.distribution} declares unknown group {group}"
        for name, target in entries.items():
            info = ALL_REGISTRIES[kind].info(name)
            assert (info.distribution, info.target) == (package.distribution, target)
            assert info.summary, f"{kind} {name!r} has no docstring"


def test_listing_every_kind_builds_no_module(monkeypatch):
    built = []
    original_init = torch.nn.Module.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", counting_init)
    for registry in ALL_REGISTRIES.values():
        registry.refresh()
    infos, errors = describe_components()
    assert infos and not errors
    assert built == []


def test_components_command_lists_every_kind_as_json():
    script = Path(sys.executable).parent / "sphinx-pipeline"
    result = subprocess.run(
        [str(script), "components", "--json"], capture_output=True, text=True, check=True
    )
    payload = json.loads(result.stdout)
    listed = {(row["kind"], row["name"]): row["distribution"] for row in payload["components"]}
    assert listed[("projectors", "linear_ln")] == "sphinx-mixer"
    assert payload["skipped_plugins"] == []
