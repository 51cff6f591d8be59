#!/usr/bin/env bash
# Installs Debian's chromium for tests/test_space_browser.py, which drives it through
# Playwright's Python package (executable_path=/usr/bin/chromium): Playwright's own browser
# download is not used. Idempotent: does nothing when /usr/bin/chromium exists.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
/usr/bin/chromium --version
