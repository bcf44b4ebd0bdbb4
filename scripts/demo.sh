#!/usr/bin/env bash
# One command: install the gateway into .venv and run the demo on http://127.0.0.1:8000
# (embedded fakeredis unless REDIS_URL is set). Extra arguments go to `gateway demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
make_venv ""
exec .venv/bin/gateway demo "$@"
