#!/usr/bin/env bash
# Refresh the screenshots in docs/ (README): runs the browser tests that take them, in
# headless Chromium, writing into docs/ instead of a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
need_debs "redis-server=redis-server" "/usr/bin/chromium=chromium"
make_venv "[test]"
GATEWAY_SCREENSHOTS_DIR="$PWD/docs" exec .venv/bin/python -m pytest -q tests/test_browser.py \
  -k "switch_and_reload or screenshots" "$@"
