#!/usr/bin/env bash
# The README's main-job command: set up `.venv` if needed, then run the most end-to-end thing the
# toolkit has so far. Until the trainer and its embedded demo exist, that is the component
# catalogue: every registry of every installed package, loaded through its entry points.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
echo "== Registered components (the training demo replaces this once sphinx-pipeline train exists)"
"$root/.venv/bin/sphinx-pipeline" components "$@"
