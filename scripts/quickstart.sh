#!/usr/bin/env bash
# Quick start: install everything, then run the gateway on its embedded defaults
# (embedded Rego engine, SQLite task store, file audit sink, loopback only):
# gRPC on 127.0.0.1:8081, HTTP on 127.0.0.1:8080, state in ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/mcp-gateway serve "$@"
