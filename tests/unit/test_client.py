"""The client library's pure parts: results, exit statuses of ``mcp-gateway exec``, the
URL's choice of transport (``gateway.client``); its calls are exercised against real
gateways in ``tests/e2e/test_client.py``."""

from __future__ import annotations

import asyncio

import pytest

from gateway.client import AsyncClient, OutputChunk, ResourceUsage, Task, TaskResult
from gateway.client.cli import EXIT_STATUSES, _exit_status


def _done(status: str, exit_code: int, error: str | None = None) -> Task:
    return Task("task-" + "0" * 32, status, "2026-12-07T00:00:00Z",
                result=TaskResult(exit_code, "", "", ResourceUsage(), 1, error=error))


def test_exec_exits_with_the_commands_status_or_a_documented_one() -> None:
    assert _exit_status(_done("COMPLETED", 0)) == 0
    assert _exit_status(_done("COMPLETED", 3)) == 3
    assert _exit_status(_done("COMPLETED", 137)) == 137  # killed by a signal inside: 128 + 9
    assert _exit_status(_done("TIMED_OUT", 137)) == EXIT_STATUSES["timed_out"] == 124
    assert _exit_status(_done("CANCELLED", 137)) == EXIT_STATUSES["cancelled"] == 130
    assert _exit_status(_done("FAILED", -1, "bwrap: no such file")) == EXIT_STATUSES["gateway_error"] == 125
    assert _exit_status(_done("FAILED", 1)) == 1  # ran and failed (e.g. out of memory): its status


def test_an_exit_entry_carries_the_status_and_final_states_are_known() -> None:
    assert OutputChunk(4, "exit", b"3", 0).exit_code == 3
    assert OutputChunk(4, "exit", b"-1", 0).exit_code == -1
    assert OutputChunk(3, "stdout", b"3", 0).exit_code is None
    assert _done("COMPLETED", 0).final and not Task("t", "RUNNING", "").final


def test_the_url_picks_the_transport_and_bad_options_are_refused() -> None:
    async def make(url: str, **options: object) -> str:
        client = AsyncClient(url, **options)  # type: ignore[arg-type]
        try:
            return type(client._transport).__name__
        finally:
            await client.aclose()

    assert asyncio.run(make("http://127.0.0.1:1")) == "RestTransport"
    assert asyncio.run(make("grpc://127.0.0.1:1")) == "GrpcTransport"
    with pytest.raises(ValueError, match="must start with"):
        asyncio.run(make("ftp://x"))
    with pytest.raises(ValueError, match="certificate"):
        asyncio.run(make("https://x", client_key="k.pem"))
