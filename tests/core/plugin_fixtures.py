"""Write tiny third-party distributions (package + `*.dist-info`) into a folder on sys.path."""

from pathlib import Path
from textwrap import dedent


def write_distribution(
    root: Path, distribution: str, module: str, source: str, entry_points: dict[str, dict[str, str]]
) -> None:
    """Create `module` and an installed-distribution record declaring `entry_points`
    (group -> name -> "module:attribute"), as pip would leave them in site-packages."""
    package = root / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(dedent(source))
    info = root / f"{distribution.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
    lines = []
    for group, names in entry_points.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in names.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
