"""``execute_command`` over MCP vs ``POST /v1/execute?wait`` over REST, in one run.

    .venv/bin/python bench/mcp_vs_rest.py [--runs 300] [--block 25] [--smoke]

(Not ``bench/mcp.py``: every bench script has ``bench/`` first on ``sys.path``, where a module
named ``mcp`` would shadow the SDK's package for all of them.)

A real ``mcp-gateway serve --dev`` (request rate limits off) runs ``/bin/true``; in turns of
``--block`` calls each, so drift in the machine's load falls on both alike:

- ``REST wait``: ``POST /v1/execute?wait=30`` (200 with the final task), httpx;
- ``MCP httpx``: ``tools/call execute_command`` as plain JSON-RPC in a 2025-11-25 session
  over the same httpx client (the answer is one Server-Sent Event): the edge against the
  edge, the target's row;
- ``MCP SDK 2025-11-25``: the same call through the SDK's own client (``mode="legacy"``:
  initialize, then ``Mcp-Session-Id``);
- ``MCP SDK 2026-07-28``: the same without a session (the revision the SDK negotiates by
  default).

The SDK rows add the client's own CPU (its JSON-RPC models, the output-schema validation of
every result), which runs in the caller, not in the gateway. All paths run in one asyncio
loop of this process, one call at a time. Printed per path: median and p99 latency in ms
and the median's ratio to REST's (target, issue 19: MCP at most 1.2 x REST).
Numbers only: benchmarks inform, tests decide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import httpx2
from common import Report, latency_table, parse_args
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import start_gateway  # noqa: E402

FIRST_UID = 270_000  # a uid range of its own, not the default one another gateway may hold
TRUE = "/bin/true"


async def measure(paths: dict[str, Callable[[], Awaitable[None]]], runs: int, block: int) -> dict[str, list[float]]:
    """Latencies in ms per path, ``runs`` calls each in turns of ``block`` (after a warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for call in paths.values():
        for _ in range(min(10, runs)):
            await call()
    while any(len(t) < runs for t in times.values()):
        for name, call in paths.items():
            for _ in range(min(block, runs - len(times[name]))):
                start = time.perf_counter()
                await call()
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


async def run(http_url: str, runs: int, block: int) -> dict[str, list[float]]:
    """Latencies in ms of ``runs`` /bin/true calls per path (see the module docstring) against
    the gateway at ``http_url``, in turns of ``block``. Raises AssertionError on a call that
    does not complete with exit code 0."""
    async with httpx.AsyncClient(base_url=http_url, timeout=60) as rest, \
            httpx2.AsyncClient(timeout=60) as h1, httpx2.AsyncClient(timeout=60) as h2, \
            Client(streamable_http_client(f"{http_url}/mcp", http_client=h1), mode="legacy") as legacy, \
            Client(streamable_http_client(f"{http_url}/mcp", http_client=h2), mode="2026-07-28") as modern:

        async def rest_wait() -> None:
            reply = await rest.post("/v1/execute", params={"wait": 30}, json={"command": TRUE, "timeout": 30})
            assert reply.status_code == 200 and reply.json()["result"]["exit_code"] == 0, reply.text

        raw = await _raw_session(rest)

        async def raw_mcp() -> None:
            reply = await rest.post("/mcp", headers=raw, json={
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "execute_command", "arguments": {"command": TRUE, "timeout_s": 30}}})
            data = next(line for line in reply.text.splitlines() if line.startswith("data: "))
            body = json.loads(data.removeprefix("data: "))["result"]["structuredContent"]
            assert reply.status_code == 200 and body["exit_code"] == 0, reply.text

        def over(client: Client) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                result = await client.call_tool("execute_command", {"command": TRUE, "timeout_s": 30})
                body = result.structured_content
                assert not result.is_error and body is not None and body["exit_code"] == 0, result
            return call

        return await measure({"REST wait": rest_wait, "MCP httpx": raw_mcp, "MCP SDK 2025-11-25": over(legacy),
                              "MCP SDK 2026-07-28": over(modern)}, runs, block)


async def _raw_session(http: httpx.AsyncClient) -> dict[str, str]:
    """Open a 2025-11-25 session with plain JSON-RPC over ``http`` (the REST path's client);
    returns the headers its calls carry."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    opened = await http.post("/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
    assert opened.status_code == 200, opened.text
    headers.update({"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"})
    await http.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def main() -> None:
    """Run both edges in turns and print one table."""
    parser = argparse.ArgumentParser(description="execute_command over MCP vs REST ?wait")
    parser.add_argument("--runs", type=int, default=300, help="calls per path")
    parser.add_argument("--block", type=int, default=25, help="calls per turn")
    args = parse_args(parser, smoke={"runs": 3, "block": 2})
    with tempfile.TemporaryDirectory() as root:
        os.chmod(root, 0o711)  # the sandbox uid must reach the workspaces inside
        gateway = start_gateway(
            Path(root) / "gateway" / "var", "--log-level", "warning",
            env={"MCP_GATEWAY_SANDBOX__UID": str(FIRST_UID), "MCP_GATEWAY_SANDBOX__GID": str(FIRST_UID),
                 "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": "0",
                 "MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S": "0"})
        try:
            times = asyncio.run(run(gateway.http_url, args.runs, args.block))
        finally:
            gateway.stop()
    print(f"\n/bin/true, {args.runs} calls per path in turns of {args.block}, cpus={os.cpu_count()}")
    rest_median = latency_table(times, "REST wait", "x REST")
    print("target (issue 19): MCP <= 1.2 x REST wait (median), the same HTTP client on both (MCP httpx); the SDK "
          "rows add the SDK client's own CPU (JSON-RPC models, output-schema validation) on the caller's side")
    report = Report()
    report.figure("/bin/true, execute_command over MCP, httpx (median)", statistics.median(times["MCP httpx"]), "ms",
                  baseline=rest_median, baseline_name="REST ?wait, httpx", target="<= 1.2 x")
    for name in ("MCP SDK 2025-11-25", "MCP SDK 2026-07-28"):
        report.figure(f"/bin/true, execute_command over {name} (median)", statistics.median(times[name]), "ms",
                      baseline=rest_median, baseline_name="REST ?wait, httpx", target="")
    for name, samples in times.items():
        report.samples(f"/bin/true: {name}", samples)
    report.write(args)


if __name__ == "__main__":
    main()
