#!/usr/bin/env bash
# Create or refresh `.venv` at the repository root: PyTorch, the six sphinx packages in editable
# mode, and the test tools. Idempotent: a fingerprint of every input (this script, the
# constraints, all pyproject files) is stored in the venv, and pip runs only when it changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
packages=(core encoders mixer llm data pipelines)

fingerprint() {
  (cd "$root" && cat scripts/setup_env.sh scripts/constraints.txt pyproject.toml \
    packages/*/pyproject.toml) | sha256sum | cut -d' ' -f1
}

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.10 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 14))'; then
      echo "$candidate"
      return
    fi
  done
  echo "setup: no Python 3.10-3.13 found (set PYTHON=/path/to/python)" >&2
  exit 1
}

wanted="$(fingerprint)"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.setup-fingerprint" ] &&
  [ "$(cat "$venv/.setup-fingerprint")" = "$wanted" ]; then
  exit 0
fi

started=$SECONDS
if [ ! -x "$venv/bin/python" ]; then
  python="$(pick_python)"
  echo "setup: creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
pip() {
  # This machine's pip configuration names extra local indexes that may be absent; hide pip's
  # "is ignored" notice about them and keep every other message.
  "$venv/bin/python" -m pip --quiet --disable-pip-version-check "$@" 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
pip install --upgrade pip  # pip >= 25.1 reads dependency groups (--group)

echo "setup: installing PyTorch (pinned in scripts/constraints.txt)"
pip install --constraint "$root/scripts/constraints.txt" torch torchvision

echo "setup: installing ${packages[*]} (editable) and the test tools"
editable=()
for name in "${packages[@]}"; do editable+=(--editable "$root/packages/$name"); done
(cd "$root" && pip install --constraint scripts/constraints.txt "${editable[@]}" --group test)

rm -f "$venv/.setup-fingerprint"
echo "$wanted" >"$venv/.setup-fingerprint"
echo "setup: done in $((SECONDS - started)) s ($(du -sh "$venv" | cut -f1) in .venv)"
