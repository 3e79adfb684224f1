#!/usr/bin/env bash
# Regenerate gateway/proto/ from proto/mcp.proto. The -I mapping makes the stubs
# import each other as `gateway.proto.mcp_pb2`, so they work inside the package.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -Igateway/proto=proto \
  --python_out=. --pyi_out=. --grpc_python_out=. proto/mcp.proto
