#!/usr/bin/env bash
# The README's main-job command: set up `.venv` if needed, then run the embedded demo: a tiny
# SPHINX (two encoders mixed channel-wise, a 4-layer Llama) trained from scratch on the CPU on
# sphinx-data's synthetic multi-task data, then scored on held-out data, with figures written to
# runs/demo. Each run starts over (the generated data is reused). Extra arguments go to
# `sphinx-pipeline train` (e.g. --max-steps 50: a quick look at every phase, about 25 s).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
exec "$root/.venv/bin/sphinx-pipeline" train --out "$root/runs/demo" --restart "$@"
