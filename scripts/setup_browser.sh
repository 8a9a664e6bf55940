#!/usr/bin/env bash
# Install the headless browser the web-page tests drive (tests/pipeline/test_serve_browser.py):
# Debian's `chromium` and `chromium-driver`, whose versions match. Idempotent: nothing happens
# when both are there. Where they cannot be installed (no apt-get, not root and no passwordless
# sudo, apt-get failing) it says why and exits 0: those tests are then skipped, with the reason.
set -euo pipefail

packages=(chromium chromium-driver)

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
skip() {
  echo "setup-browser: $1; the browser tests are skipped" >&2
  exit 0
}
command -v apt-get >/dev/null 2>&1 ||
  skip "no apt-get here to install ${packages[*]} (install Chromium and its chromedriver)"
if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root() { sudo -n "$@"; }
else
  skip "not root and no passwordless sudo (as root: apt-get install ${packages[*]})"
fi

echo "setup-browser: installing ${packages[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
install() { as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"; }
if ! install >/dev/null 2>&1; then
  # a fresh image has no package lists yet
  as_root apt-get update -qq >/dev/null 2>&1 || true
  install >/dev/null || skip "apt-get could not install ${packages[*]}"
fi
echo "setup-browser: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null)"
