"""Suite-wide checks: every package's test folder must contribute tests to a full run."""

from pathlib import Path

import pytest

TEST_ROOT = Path(__file__).parent
PACKAGE_TEST_DIRS = ("core", "encoders", "mixer", "llm", "data", "pipeline", "integration")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A full run (no paths, -k or -m given) fails if a package's folder collected no test."""
    if config.option.file_or_dir or config.option.keyword or config.option.markexpr:
        return
    counts = {name: 0 for name in PACKAGE_TEST_DIRS}
    for item in items:
        relative = Path(item.path).resolve().relative_to(TEST_ROOT.resolve())
        if relative.parts and relative.parts[0] in counts:
            counts[relative.parts[0]] += 1
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise pytest.UsageError(f"No tests collected from tests/{{{','.join(empty)}}}/: {counts}")
