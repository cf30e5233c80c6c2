#!/usr/bin/env bash
# Install Debian's headless Chromium, which the tests use to check rendered HTML (reports, dashboards).
# Idempotent; a test that needs it fails (never skips) when it is missing.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends chromium \
  || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends chromium; }
