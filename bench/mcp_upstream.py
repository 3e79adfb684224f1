"""An upstream MCP server's tool through the gateway vs the same server called directly, in one run.

    .venv/bin/python bench/mcp_upstream.py [--runs 300] [--block 25] [--smoke]

The server is ``tests/e2e/upstream/server.py`` (the MCP SDK's low-level server) and the call
its ``echo`` tool, one call at a time, in turns of ``--block`` calls per path:

- ``direct stdio``: the SDK's client runs the server itself over stdio, with no sandbox and
  no gateway: what an agent does without the gateway (the baseline);
- ``gateway /mcp``: the SDK's client calls ``probe__echo`` on a real ``mcp-gateway serve
  --dev`` (2025-11-25 session), which authenticates, checks the pinned definition, asks
  policy (``tool.call``), takes the rate-limit tokens, writes the ``decision`` and
  ``tool_result`` audit events, and forwards the call to its sandboxed instance of the
  server over stdio;
- ``gateway own``: the gateway's own ``list_tasks`` tool (one ``tool_call`` audit event, a
  store query) in the same session: what the MCP edge costs by itself, so the difference
  to the row above is the upstream path's own.

Printed per path: median and p99 latency in ms and the median's ratio to the direct call.
The issue sets no target for this path; the figure says what the gateway's checks and its
audit trail cost an agent per upstream call. Numbers only: benchmarks inform, tests decide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import httpx2
import yaml
from common import Report, latency_table, parse_args
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mcp_vs_rest import measure  # noqa: E402
from tests.conftest import start_gateway  # noqa: E402

FIRST_UID = 280_000  # a uid range of its own, not the default one another gateway may hold
SERVER = REPO / "tests" / "e2e" / "upstream" / "server.py"
SITE_PACKAGES = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))


async def run(http_url: str, runs: int, block: int) -> dict[str, list[float]]:
    """Latencies in ms of ``runs`` echo calls per path (see the module docstring)."""
    direct_params = StdioServerParameters(command="/usr/bin/python3", args=[str(SERVER)],
                                          env={"PYTHONPATH": str(SITE_PACKAGES)})
    async with httpx2.AsyncClient(timeout=60) as http, \
            Client(streamable_http_client(f"{http_url}/mcp", http_client=http), mode="legacy") as gateway, \
            Client(direct_params, mode="legacy") as direct:

        def over(client: Client, name: str) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                result = await client.call_tool(name, {"text": "ping"})
                assert not result.is_error and result.structured_content == {"text": "ping"}, result
            return call

        async def own_tool() -> None:
            result = await gateway.call_tool("list_tasks", {"limit": 1})
            assert not result.is_error, result

        return await measure({"direct stdio": over(direct, "echo"), "gateway /mcp": over(gateway, "probe__echo"),
                              "gateway own": own_tool}, runs, block)


def main() -> None:
    """Start a gateway with the server declared and approved, run both paths, print one table."""
    parser = argparse.ArgumentParser(description="an upstream MCP tool through the gateway vs directly")
    parser.add_argument("--runs", type=int, default=300, help="calls per path")
    parser.add_argument("--block", type=int, default=25, help="calls per turn")
    args = parse_args(parser, smoke={"runs": 3, "block": 2})
    with tempfile.TemporaryDirectory() as root:
        os.chmod(root, 0o711)  # the sandbox uid must reach the workspaces inside
        state = Path(root) / "gateway"
        state.mkdir()
        shutil.copytree(REPO / "policies", state / "policies")
        data = json.loads((state / "policies" / "data.json").read_text())
        data["mcp"]["config"]["tools"]["allowed"] = {"probe__echo": True}
        (state / "policies" / "data.json").write_text(json.dumps(data))
        (state / "gw.yaml").write_text(yaml.safe_dump({"mcp": {"servers": {"probe": {
            "command": "/usr/bin/python3", "args": [str(SERVER)], "env": {"PYTHONPATH": str(SITE_PACKAGES)},
            "ro_paths": [str(SERVER.parent), str(SITE_PACKAGES)], "requests_per_s": 0, "principal_requests_per_s": 0,
            "startup_timeout_s": 60}}}}))
        gateway = start_gateway(
            state / "var", "--log-level", "warning", "--config", str(state / "gw.yaml"),
            "--policy-dir", str(state / "policies"),
            env={"MCP_GATEWAY_SANDBOX__UID": str(FIRST_UID), "MCP_GATEWAY_SANDBOX__GID": str(FIRST_UID),
                 "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": "0",
                 "MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S": "0"})
        try:
            with httpx.Client(base_url=gateway.http_url, timeout=120) as rest:
                review = rest.get("/v1/mcp/servers/probe/tools").raise_for_status().json()
                rest.post("/v1/mcp/servers/probe/approve",
                          params={"tools_list_sha256": review["tools_list_sha256"]}).raise_for_status()
            times = asyncio.run(run(gateway.http_url, args.runs, args.block))
        finally:
            gateway.stop()
    print(f"\nupstream echo, {args.runs} calls per path in turns of {args.block}, cpus={os.cpu_count()}")
    direct = latency_table(times, "direct stdio", "x direct")
    print("the gateway row adds authentication, the pinned-definition check, a policy decision, rate limits, "
          "two audit events and one HTTP hop; both rows run the server in its own process")
    report = Report()
    report.figure("upstream echo through the gateway's /mcp (median)", statistics.median(times["gateway /mcp"]), "ms",
                  baseline=direct, baseline_name="the same server over stdio, no gateway", target="")
    for name, samples in times.items():
        report.samples(f"upstream echo: {name}", samples)
    report.write(args)


if __name__ == "__main__":
    main()
