"""The dependency direction of DESIGN.md, enforced both on the source and at import time.

encoders <- mixer <- pipeline; llm <- pipeline; data <- pipeline; every package may use core.
Importing sphinx_mllm.data (or core) never imports torch.
"""

import json
import subprocess
import sys

import pytest

from tests.integration.package_sources import PACKAGES, sphinx_dependencies

ALLOWED = {
    "core": set(),
    "encoders": {"core"},
    "mixer": {"core", "encoders"},
    "llm": {"core"},
    "data": {"core"},
    "pipeline": {"core", "encoders", "mixer", "llm", "data"},
}

IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if not module.name.endswith(".__main__"):
        importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def modules_loaded_by_importing(module: str) -> set[str]:
    """Names in sys.modules after importing `module` and all its submodules in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, module],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_allowed_table_covers_every_package():
    assert set(ALLOWED) == set(PACKAGES)


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_source_imports_only_allowed_sphinx_packages(module):
    forbidden = sphinx_dependencies(PACKAGES[module]) - ALLOWED[module]
    assert not forbidden, f"sphinx_mllm.{module} imports sphinx_mllm.{forbidden}"


@pytest.mark.parametrize("module", ["core", "encoders", "llm", "data"])
def test_importing_every_module_loads_no_upward_package(module):
    loaded = modules_loaded_by_importing(f"sphinx_mllm.{module}")
    for other in set(PACKAGES) - ALLOWED[module] - {module}:
        assert f"sphinx_mllm.{other}" not in loaded, (
            f"sphinx_mllm.{module} loaded sphinx_mllm.{other}"
        )


@pytest.mark.parametrize("module", ["core", "data"])
def test_importing_every_module_does_not_import_torch(module):
    loaded = modules_loaded_by_importing(f"sphinx_mllm.{module}")
    assert "torch" not in loaded
