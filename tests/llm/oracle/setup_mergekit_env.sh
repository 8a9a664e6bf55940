#!/usr/bin/env bash
# Create (or repair) an ISOLATED virtual environment with mergekit 0.1.5, used only as a test
# oracle to regenerate tests/llm/fixtures/mergekit/ (see make_fixtures.py). mergekit is never a
# dependency of our packages and none of its code lives in this repository: this script only
# installs it from the package index.
#
#   tests/llm/oracle/setup_mergekit_env.sh [ENV_DIR]        # default ENV_DIR=/work/mergekit-env
#
# To avoid a second multi-GB torch install, the new venv borrows torch, transformers, safetensors,
# pydantic, yaml, ... from the repository's .venv through a .pth file (that directory is appended
# to sys.path, after the env's own site-packages; .pth files inside it, such as our editable
# installs, are NOT processed, so sphinx_mllm stays invisible there). Only mergekit (--no-deps)
# and the few pure-Python/small dependencies missing from .venv are installed into ENV_DIR.
# mergekit's declared dependency `datasets` is deliberately skipped: mergekit-yaml never imports
# it (it is only used by the evolve/tokensurgeon extras).
#
# Set SHARE_VENV=0 to instead install mergekit with all its dependencies (own torch) into ENV_DIR.
# Idempotent: re-running reuses ENV_DIR and only installs what is missing. Needs the index only.
set -euo pipefail

ENV_DIR="${1:-/work/mergekit-env}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
MAIN_VENV="${MAIN_VENV:-$REPO_ROOT/.venv}"
SHARE_VENV="${SHARE_VENV:-1}"
MERGEKIT_VERSION="0.1.5"
# Exact versions resolved when the fixtures were generated (all missing from .venv).
EXTRA_PINS=(
  "immutables==0.21"
  "accelerate==1.15.0"
  "peft==0.21.2"
  "psutil==7.2.2"
  "protobuf==7.36.2"
  "sentencepiece==0.2.3"
)

if [[ "$SHARE_VENV" == "1" ]]; then
  if [[ ! -x "$MAIN_VENV/bin/python" ]]; then
    echo "error: $MAIN_VENV/bin/python not found (run scripts/setup_env.sh first," \
      "or set MAIN_VENV=..., or SHARE_VENV=0)" >&2
    exit 1
  fi
  BASE_PYTHON="$("$MAIN_VENV/bin/python" -c 'import sys; print(sys._base_executable)')"
  SHARED_SITE="$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
else
  BASE_PYTHON="${PYTHON:-python3.11}"
fi

if [[ ! -x "$ENV_DIR/bin/python" ]]; then
  echo "creating venv $ENV_DIR with $BASE_PYTHON"
  "$BASE_PYTHON" -m venv "$ENV_DIR"
fi
PY="$ENV_DIR/bin/python"
ENV_SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PIP=("$PY" -m pip --disable-pip-version-check)

if [[ "$SHARE_VENV" == "1" ]]; then
  want="$("$MAIN_VENV/bin/python" -c 'import sys; print(sys.version_info[:2])')"
  have="$("$PY" -c 'import sys; print(sys.version_info[:2])')"
  if [[ "$want" != "$have" ]]; then
    echo "error: $ENV_DIR uses Python $have but $MAIN_VENV uses $want; remove $ENV_DIR" >&2
    exit 1
  fi
  echo "$SHARED_SITE" >"$ENV_SITE/_shared_main_venv.pth"
  "${PIP[@]}" install --no-deps "mergekit==$MERGEKIT_VERSION" "${EXTRA_PINS[@]}"
else
  rm -f "$ENV_SITE/_shared_main_venv.pth"
  "${PIP[@]}" install "mergekit==$MERGEKIT_VERSION"
fi

# Smoke checks: the CLI imports and runs, offline, and the oracle is the pinned version.
HF_HUB_OFFLINE=1 "$PY" - <<EOF
import importlib.metadata, importlib.util
import mergekit.merge, mergekit.scripts.run_yaml, torch, transformers  # noqa: F401
version = importlib.metadata.version("mergekit")
assert version == "$MERGEKIT_VERSION", version
assert importlib.util.find_spec("sphinx_mllm") is None, "sphinx_mllm must not be visible here"
print(f"mergekit {version} ok (torch {torch.__version__}, transformers {transformers.__version__})")
EOF
HF_HUB_OFFLINE=1 "$ENV_DIR/bin/mergekit-yaml" --help >/dev/null
echo "ready: HF_HUB_OFFLINE=1 $ENV_DIR/bin/mergekit-yaml CONFIG.yml OUT_DIR"
