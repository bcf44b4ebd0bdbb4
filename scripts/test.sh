#!/usr/bin/env bash
# One command: install what the tests need (Python packages, redis-server, Chromium, Node) and run
# the whole suite: lint, type check, then pytest (real redis-server, real gateway processes,
# headless Chromium). Extra arguments go to pytest. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
need_debs "redis-server=redis-server" "redis-cli=redis-tools" "/usr/bin/chromium=chromium" \
  "/usr/sbin/nginx=nginx" "docker-compose=docker-compose" "node=nodejs"
make_venv "[test,bench]"
echo "==> ruff + mypy --strict"
.venv/bin/ruff check gateway tests loadtests
.venv/bin/ruff format --check gateway tests loadtests
.venv/bin/mypy gateway
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
