#!/usr/bin/env bash
# Install what the gateway needs on a Debian machine, idempotently:
#   system packages (bubblewrap, libseccomp, gcc and headers for python-prctl and the
#   sandbox spawn shim sandbox/_spawn.c) via apt-get
#   when missing, then a virtual environment in .venv with the package installed.
# Usage: scripts/setup.sh [--test]   (--test also installs the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
ldconfig -p 2>/dev/null | grep -q 'libseccomp.so.2' || need+=(libseccomp2)
[ -f /usr/include/sys/capability.h ] || need+=(libcap-dev)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# The sandbox shows the host's /usr: the tests' probes run Debian's python3 inside it.
[ -x /usr/bin/python3 ] || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
python3 - <<'PY' >/dev/null 2>&1 || need+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
if [ -n "$extras" ]; then
  # The restricted-network tests: test hosts behind a veth pair (ip), curl and pip inside
  # the sandbox (Debian's python3-pip, which the sandbox sees under /usr).
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
log=.venv/setup-pip.log
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".${extras}" --config-settings editable_mode=compat; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: pip install failed (log above)" >&2
  exit 1
fi

# The MCP Inspector CLI, a real MCP client the end-to-end tests drive (pinned, from npm, once
# into the ignored tools folder). Without Node the test that needs it is skipped, saying so.
inspector=.tools/inspector
if [ -n "$extras" ] && command -v npm >/dev/null 2>&1 && [ ! -x "$inspector/node_modules/.bin/mcp-inspector" ]; then
  mkdir -p "$inspector"
  if ! (cd "$inspector" && HOME="$PWD" npm install --no-audit --no-fund --save-exact --loglevel=error \
        @modelcontextprotocol/inspector@2.12.0) >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: npm install of the MCP Inspector failed (log above)" >&2
    exit 1
  fi
fi
