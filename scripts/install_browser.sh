#!/usr/bin/env bash
# Install headless Chromium (Debian package 'chromium') if it is not there yet; idempotent.
# Used by the browser tests of the dashboard (tests/test_dashboard.py) and to render docs/dashboard.png.
# Exit status 0 when /usr/bin/chromium (or the binary named by $CHROMIUM) is usable afterwards.
set -euo pipefail
BIN=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$BIN" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install_browser: not root and no sudo; install the Debian package 'chromium' yourself" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# update the package lists only when apt has none yet (or the first install attempt fails)
if ! $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if [ ! -x "$BIN" ]; then
  echo "install_browser: chromium installed but $BIN is missing" >&2
  exit 1
fi
echo "install_browser: $($BIN --version 2>/dev/null || echo chromium) ready"
