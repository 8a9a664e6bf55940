#!/usr/bin/env bash
# The README's test command: set up `.venv` (and the headless browser) if needed, then lint and
# run the whole test suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh tests/core -x`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
"$root/scripts/setup_browser.sh"  # for the web page's tests; they are skipped without it
cd "$root"
.venv/bin/ruff check .
# two workers (pytest-xdist): the suite takes 5.7 minutes on 2 cores instead of 6.5
.venv/bin/python -m pytest -n 2 "$@"
