"""Every ```python block of every package README runs as written (a README is the user's first
page, so it must stay true); the blocks of one README run in order, in one fresh process."""

import re
import subprocess
import sys

import pytest

from tests.integration.package_sources import PACKAGES, REPO

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def readme_program(path) -> str:
    return "\n".join(PYTHON_BLOCK.findall(path.read_text()))


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_package_readme_python_runs(module, tmp_path):
    program = readme_program(PACKAGES[module].root / "README.md")
    assert program.strip(), f"packages/{PACKAGES[module].folder}/README.md has no python example"
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{module} README failed:\n{result.stderr[-3000:]}"


def test_root_readme_names_exactly_two_commands():
    commands = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert [command.strip() for command in commands] == ["scripts/demo.sh", "scripts/test.sh"]
