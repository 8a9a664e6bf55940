#!/usr/bin/env bash
# Build the wheel of one package (and of sphinx-core, which it may depend on), install it into a
# fresh, empty virtual environment with only its declared dependencies, import it, list its
# registry, and check that the packages above it are absent there.
# Usage: .ci/standalone_install.sh encoders
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="${1:?usage: standalone_install.sh PACKAGE (e.g. encoders)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

quiet_pip() {
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

echo "standalone: building wheels of sphinx-core and sphinx-$name"
quiet_pip "$root/.venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" \
  "$root/packages/core" "$root/packages/$name"

echo "standalone: installing sphinx-$name into an empty venv"
"$root/.venv/bin/python" -m venv "$work/venv"
quiet_pip "$work/venv/bin/python" -m pip install --quiet --constraint "$root/scripts/constraints.txt" \
  "$work"/dist/*.whl
"$work/venv/bin/python" -m pip check

echo "standalone: using sphinx_mllm.$name alone"
"$work/venv/bin/python" - "$name" <<'PY'
import importlib
import importlib.metadata
import importlib.util
import sys

name = sys.argv[1]
package = importlib.import_module(f"sphinx_mllm.{name}")
listing = getattr(package, f"list_{name}")()
print(f"sphinx_mllm.{name} {importlib.metadata.version(f'sphinx-{name}')}: list_{name}() -> {listing}")
installed = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
sphinx = [d for d in installed if d.startswith("sphinx-")]
assert sphinx == ["sphinx-core", f"sphinx-{name}"], f"unexpected sphinx distributions: {sphinx}"
for other in ("encoders", "mixer", "llm", "data", "pipeline"):
    if other != name:
        assert importlib.util.find_spec(f"sphinx_mllm.{other}") is None, f"sphinx_mllm.{other} importable"
print(f"standalone: ok ({len(installed)} distributions in the venv)")
PY
checks="$root/.ci/standalone_$name.py"
if [ -f "$checks" ]; then
  echo "standalone: $checks"
  (cd "$work" && "$work/venv/bin/python" "$checks")
fi
