#!/usr/bin/env bash
# Install Debian's chromium for the dashboard browser test (tests/test_dashboard_browser.py),
# unless /usr/bin/chromium is already there. Playwright drives it; `playwright install` is never run.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
