#!/usr/bin/env bash
# Quick start: install everything, then run the gateway on its embedded defaults
# (embedded Rego engine, SQLite task store, file audit sink, loopback only):
# gRPC on 127.0.0.1:8081, HTTP on 127.0.0.1:8080, state in ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "$(id -u)" -eq 0 ] && [ -z "${MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT:-}" ] \
   && ! setpriv --reuid=60000 --regid=60000 --clear-groups test -x "$PWD"; then
  # As root the sandbox runs as uid 60000, which must be able to reach its workspace;
  # a checkout under a 0700 home (/root) is not reachable, so keep workspaces elsewhere.
  export MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT=/var/lib/mcp-gateway/workspaces
  echo "quickstart: $PWD is not reachable by the sandbox uid; workspaces go to $MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT" >&2
fi
exec .venv/bin/mcp-gateway serve "$@"
