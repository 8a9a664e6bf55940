"""Each package declares exactly what it imports: no undeclared import, no unused declaration."""

import importlib.metadata

import pytest

from tests.integration.package_sources import (
    PACKAGES,
    normalize,
    requirement_name,
    sphinx_dependencies,
    third_party_top_levels,
)


def distributions_providing(top_level: str) -> set[str]:
    providers = importlib.metadata.packages_distributions().get(top_level)
    assert providers, f"no installed distribution provides the module {top_level!r}"
    return {normalize(name) for name in providers}


def declared(module: str, optional: bool = False) -> set[str]:
    """Required dependencies, and with `optional` those of the extras too (imported lazily)."""
    project = PACKAGES[module].pyproject["project"]
    requirements = list(project.get("dependencies", []))
    if optional:
        requirements += [
            r for extra in project.get("optional-dependencies", {}).values() for r in extra
        ]
    return {requirement_name(requirement) for requirement in requirements}


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_every_import_is_declared(module):
    requirements = declared(module, optional=True)
    for top_level, files in third_party_top_levels(PACKAGES[module]).items():
        providers = distributions_providing(top_level)
        assert providers & requirements, (
            f"{top_level} (from {providers}) imported by {files[0]} is not declared in "
            f"packages/{PACKAGES[module].folder}/pyproject.toml"
        )
    for other in sphinx_dependencies(PACKAGES[module]):
        assert normalize(PACKAGES[other].distribution) in requirements


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_every_declaration_is_imported(module):
    used = {
        normalize(PACKAGES[other].distribution) for other in sphinx_dependencies(PACKAGES[module])
    }
    for top_level in third_party_top_levels(PACKAGES[module]):
        used |= distributions_providing(top_level)
    unused = declared(module) - used
    assert not unused, f"packages/{PACKAGES[module].folder} declares {unused} but never imports it"


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_no_exact_pins(module):
    for requirement in PACKAGES[module].pyproject["project"].get("dependencies", []):
        assert "==" not in requirement, f"{module} pins {requirement!r}; declare a range"


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_layout(module):
    package = PACKAGES[module]
    assert (package.source / "__init__.py").is_file()
    assert (package.source / "py.typed").is_file()
    assert (package.root / "README.md").is_file()
    assert not (package.source.parent / "__init__.py").exists(), (
        "sphinx_mllm is a namespace package"
    )
    assert package.pyproject["build-system"]["build-backend"] == "hatchling.build"
    assert package.pyproject["project"]["name"] == package.distribution
