#!/usr/bin/env bash
# Debian's Chromium for the web page test (driven by Playwright through /usr/bin/chromium). Needs root.
set -euo pipefail
command -v chromium >/dev/null && exit 0
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
