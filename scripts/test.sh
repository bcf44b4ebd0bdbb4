#!/usr/bin/env bash
# One command: install what the tests need (Python packages, redis-server, Chromium, nginx,
# Node 22+ (the `ai` package needs it) and the pinned npm packages) and run the whole suite:
# lint and type checks of the Python package and the frontend, then pytest (real redis-server
# and Redis Cluster, real gateway and worker processes, headless Chromium, Node clients).
# Extra arguments go to pytest. .ci/run calls exactly this; with CI=true a skipped test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
need_debs "redis-server=redis-server" "redis-cli=redis-tools" "/usr/bin/chromium=chromium" \
  "/usr/sbin/nginx=nginx" "docker-compose=docker-compose" "node=nodejs"
need_debs "npm=npm"
make_venv "[test,bench]"
need_node 22
echo "==> npm ci (tests/node: typescript and the Node clients, pinned by package-lock.json)"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
echo "==> ruff + mypy --strict"
.venv/bin/ruff check gateway tests loadtests
.venv/bin/ruff format --check gateway tests loadtests
.venv/bin/mypy gateway
echo "==> tsc --noEmit (frontend/*.js, // @ts-check)"
(cd tests/node && npx tsc -p tsconfig.json && npx tsc -p tsconfig.worker.json)
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
