#!/usr/bin/env bash
# Quick start: install everything, then run the gateway on its embedded defaults
# (embedded Rego engine, SQLite task store, file audit sink, loopback only):
# gRPC on 127.0.0.1:8081, HTTP on 127.0.0.1:8080, state in ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# As root, each task runs as its own uid from 60000 up, and its workspace is bound by path:
# every directory above the workspaces must be searchable by those uids and writable only
# by root (else another user could swap a directory under a bind). A checkout under a 0700
# home, or one owned by a user, does not qualify; then keep workspaces under /var/lib.
checkout_is_safe_for_workspaces() {
  .venv/bin/python - "$PWD" <<'PY'
import os, stat, sys
path = "/"
for part in [""] + [p for p in sys.argv[1].split("/") if p]:
    path = os.path.join(path, part)
    st = os.stat(path)
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX
    if st.st_uid != 0 or writable or not st.st_mode & stat.S_IXOTH:
        sys.exit(1)
PY
}
if [ "$(id -u)" -eq 0 ] && [ -z "${MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT:-}" ] && ! checkout_is_safe_for_workspaces; then
  export MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT=/var/lib/mcp-gateway/workspaces
  echo "quickstart: workspaces go to $MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT ($PWD is not reachable by the sandbox uids or not root-owned all the way up)" >&2
fi
# --dev: no credentials needed, loopback only (the gateway refuses --dev on any other
# address and says so at start). For tokens, API keys and TLS see the README.
exec .venv/bin/mcp-gateway serve --dev "$@"
