#!/usr/bin/env bash
# Headless Chromium for tests/test_dashboard.py (the HTML dashboard must open without console errors).
# Debian/Ubuntu, run as root (CI) or with sudo; a no-op when chromium is already on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/install_browser.sh: run as root (apt-get install chromium); tests/test_dashboard.py skips the browser check without it" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
