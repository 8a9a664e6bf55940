"""Third-party plugins: a working one is listed and usable, a broken one is reported and skipped.

The plugins are real distributions written to a temporary folder on sys.path (a package plus
its `*.dist-info` with `entry_points.txt`), found through the same entry-point machinery as the
built-in components of every sphinx package.
"""

import importlib
import sys

import pytest
import torch

from sphinx_mllm.core import PluginImportError, PluginLoadWarning
from sphinx_mllm.mixer import PROJECTORS, create_projector, list_projectors
from tests.core.plugin_fixtures import write_distribution

GOOD_PLUGIN = """
    import torch
    from sphinx_mllm.mixer import Projector

    CALLS = []

    def scaled_identity(in_dim, out_dim, *, scale=2.0, device=None, dtype=None):
        '''Multiplies features by a constant (a third-party projector).'''
        CALLS.append((in_dim, out_dim))

        class Scale(torch.nn.Module):
            def forward(self, features):
                return features * scale

        return Projector("scaled_identity", in_dim, out_dim, Scale())
"""

BROKEN_PLUGIN = """
    raise RuntimeError("this plugin is broken on purpose")
"""


@pytest.fixture
def plugins_on_path(tmp_path, monkeypatch):
    write_distribution(
        tmp_path,
        "sphinx-good-plugin",
        "sphinx_good_plugin",
        GOOD_PLUGIN,
        {"sphinx_mllm_projectors": {"scaled_identity": "sphinx_good_plugin:scaled_identity"}},
    )
    write_distribution(
        tmp_path,
        "sphinx-broken-plugin",
        "sphinx_broken_plugin",
        BROKEN_PLUGIN,
        {"sphinx_mllm_projectors": {"broken_projector": "sphinx_broken_plugin:make"}},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    PROJECTORS.refresh()
    yield tmp_path
    monkeypatch.undo()
    for module in ("sphinx_good_plugin", "sphinx_broken_plugin"):
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
    PROJECTORS.refresh()


def test_good_plugin_is_listed_and_usable_and_broken_one_is_reported(plugins_on_path):
    with pytest.warns(PluginLoadWarning) as warned:
        names = list_projectors()
    assert "scaled_identity" in names
    assert "broken_projector" not in names
    assert {"linear", "linear_ln", "mlp2x_gelu", "identity"} <= set(names), "built-ins still listed"

    (error,) = PROJECTORS.load_errors
    assert (error.name, error.distribution) == ("broken_projector", "sphinx-broken-plugin")
    assert error.error == "RuntimeError: this plugin is broken on purpose"
    assert [str(w.message) for w in warned] == [str(error)]

    projector = create_projector("scaled_identity", 4, 4, scale=3.0)
    features = torch.arange(8.0).reshape(1, 2, 4)
    assert torch.equal(projector(features), features * 3.0)
    info = PROJECTORS.info("scaled_identity")
    assert info.distribution == "sphinx-good-plugin"
    assert info.summary == "Multiplies features by a constant (a third-party projector)."


def test_listing_does_not_call_factories(plugins_on_path):
    with pytest.warns(PluginLoadWarning):
        list_projectors()
    assert sys.modules["sphinx_good_plugin"].CALLS == []


def test_getting_a_broken_plugin_raises_with_the_cause(plugins_on_path):
    with pytest.warns(PluginLoadWarning), pytest.raises(PluginImportError) as raised:
        PROJECTORS.get("broken_projector")
    assert "sphinx-broken-plugin" in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_builtins_are_listed_through_their_own_entry_points():
    for name in ("linear", "linear_ln", "mlp2x_gelu", "identity"):
        info = PROJECTORS.info(name)
        assert info.distribution == "sphinx-mixer"
        assert info.target == f"sphinx_mllm.mixer.projectors:{name}"


def test_two_distributions_declaring_one_name_are_warned_about(tmp_path, monkeypatch):
    for index in (1, 2):
        write_distribution(
            tmp_path / f"site{index}",
            f"sphinx-clash-{index}",
            f"sphinx_clash_{index}",
            f"def make(in_dim, out_dim):\n    return {index}\n",
            {"sphinx_mllm_projectors": {"clashing": f"sphinx_clash_{index}:make"}},
        )
    monkeypatch.syspath_prepend(str(tmp_path / "site2"))
    monkeypatch.syspath_prepend(str(tmp_path / "site1"))
    PROJECTORS.refresh()
    try:
        with pytest.warns(
            PluginLoadWarning, match="declared by both 'sphinx-clash-1' and 'sphinx-clash-2'"
        ):
            assert PROJECTORS.get("clashing")(1, 1) == 1
    finally:
        monkeypatch.undo()
        PROJECTORS.refresh()
