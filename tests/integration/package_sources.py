"""Facts about the monorepo's packages read from their source trees and pyproject files."""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Package:
    folder: str  # under packages/
    module: str  # under sphinx_mllm.
    distribution: str

    @property
    def root(self) -> Path:
        return REPO / "packages" / self.folder

    @property
    def source(self) -> Path:
        return self.root / "src" / "sphinx_mllm" / self.module

    @property
    def pyproject(self) -> dict:
        return tomllib.loads((self.root / "pyproject.toml").read_text())


PACKAGES = {
    package.module: package
    for package in (
        Package("core", "core", "sphinx-core"),
        Package("encoders", "encoders", "sphinx-encoders"),
        Package("mixer", "mixer", "sphinx-mixer"),
        Package("llm", "llm", "sphinx-llm"),
        Package("data", "data", "sphinx-data"),
        Package("pipelines", "pipeline", "sphinx-pipeline"),
    )
}


def normalize(distribution: str) -> str:
    """PEP 503 normalisation of a distribution name."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def imported_modules(package: Package) -> dict[str, list[str]]:
    """Every absolute import in the package's source, anywhere in a file (functions included):
    module name -> files that import it."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


def sphinx_dependencies(package: Package) -> set[str]:
    """The other sphinx packages (by module name) this package's source imports."""
    modules = set()
    for name in imported_modules(package):
        parts = name.split(".")
        if parts[0] == "sphinx_mllm" and len(parts) > 1 and parts[1] != package.module:
            modules.add(parts[1])
    return modules


def third_party_top_levels(package: Package) -> dict[str, list[str]]:
    """Imported top-level modules that are neither stdlib nor sphinx_mllm."""
    result: dict[str, list[str]] = {}
    for name, files in imported_modules(package).items():
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in ("sphinx_mllm", "__future__"):
            continue
        result.setdefault(top, []).extend(files)
    return result
