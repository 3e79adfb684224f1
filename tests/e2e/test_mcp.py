"""The MCP edge as MCP clients see it: the SDK's own client over real HTTP on loopback
(both protocol revisions), over stdio through ``mcp-gateway mcp-stdio``, and raw HTTP for
what the authorization spec asks of a resource server, against a real gateway process with
API keys (no dev mode)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.apikeys import hash_api_key, new_api_key
from gateway.observability.metrics import LABEL_VALUES
from tests.conftest import GATEWAY_BIN, REPO, GatewayProcess, start_gateway, wait_until

ALL_SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"]
LEGACY, MODERN = "legacy", "2026-07-28"
AGENT = types.Implementation(name="e2e-agent", version="9.9")
INSPECTOR = REPO / ".tools" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"
SESSIONS = 8  # mcp.max_sessions_per_principal of the gateway here (raw and Inspector sessions stay open)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {name: new_api_key() for name in ("alice", "bob", "reader", "dave")}


@pytest.fixture(scope="module")
def gateway(state_root: Path, keys: dict[str, str]) -> Iterator[GatewayProcess]:
    state = Path(tempfile.mkdtemp(prefix="mcp-", dir=state_root))
    entries = [("alice", "acme", ALL_SCOPES), ("bob", "beta", ALL_SCOPES), ("reader", "acme", ["tasks:read"]),
               ("dave", "acme", ALL_SCOPES)]
    config = {"auth": {"api_keys": [
        {"hash": hash_api_key(keys[name]), "principal": name, "tenant": tenant, "roles": ["user"], "scopes": scopes}
        for name, tenant, scopes in entries]}, "mcp": {"max_sessions_per_principal": SESSIONS}}
    (state / "gw.yaml").write_text(yaml.safe_dump(config))
    gw = start_gateway(state / "var", "--config", str(state / "gw.yaml"), dev=False)
    yield gw
    assert gw.stop() == 0, gw.stderr_path.read_text()
    log = gw.stderr_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log  # refusals and cancellations are no errors
    assert "session ID" not in log  # the SDK's INFO lines name session ids


@contextlib.asynccontextmanager
async def session(gateway: GatewayProcess, key: str | None, mode: str = LEGACY) -> AsyncIterator[Client]:
    """The SDK's client on the gateway's /mcp, as agent ``e2e-agent`` 9.9."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, Client(
        streamable_http_client(f"{gateway.http_url}/mcp", http_client=http), mode=mode, client_info=AGENT,
        cache=None,
    ) as client:
        yield client


def stdio_session(gateway: GatewayProcess, key: str) -> Client:
    """The SDK's client on ``mcp-gateway mcp-stdio`` (a subprocess) forwarding to the gateway."""
    params = StdioServerParameters(command=str(GATEWAY_BIN), args=["mcp-stdio", "--url", gateway.http_url],
                                   env={"MCP_GATEWAY_TOKEN": key})
    return Client(params, mode=LEGACY, client_info=AGENT, cache=None)


def error_code(result: types.CallToolResult) -> int:
    assert result.is_error and result.structured_content is not None, result
    return int(result.structured_content["error"]["code"])


def rest(gateway: GatewayProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def events(gateway: GatewayProcess, **match: Any) -> list[dict[str, Any]]:
    return [e for e in gateway.audit_events() if all(e.get(k) == v for k, v in match.items())]


def sleepers(marker: str) -> list[int]:
    """Pids whose command line names ``marker`` (a sandboxed ``sleep``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


# -- over HTTP ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [LEGACY, MODERN])
def test_lists_the_tools_with_schemas_and_annotations(gateway: GatewayProcess, keys: dict[str, str],
                                                      mode: str) -> None:
    async def run() -> types.ListToolsResult:
        async with session(gateway, keys["alice"], mode) as client:
            return await client.list_tools()

    tools = {tool.name: tool for tool in asyncio.run(run()).tools}
    assert set(tools) == {"execute_command", "get_task", "read_task_output", "cancel_task", "list_tasks",
                          "read_file", "write_file", "delete_file"}
    for tool in tools.values():
        assert tool.input_schema["type"] == "object" and tool.output_schema is not None, tool.name
        assert tool.annotations is not None and tool.description
    assert tools["execute_command"].input_schema["required"] == ["command"]
    assert tools["execute_command"].annotations.destructive_hint is True
    assert tools["get_task"].annotations.read_only_hint is True
    assert tools["delete_file"].annotations.destructive_hint is True


@pytest.mark.parametrize("mode", [LEGACY, MODERN])
def test_execute_command_streams_output_as_progress_and_returns_the_result(
        gateway: GatewayProcess, keys: dict[str, str], mode: str) -> None:
    progress: list[tuple[float, str | None]] = []

    async def run() -> types.CallToolResult:
        async def seen(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, message))

        async with session(gateway, keys["alice"], mode) as client:
            return await client.call_tool(
                "execute_command", {"command": "sh", "args": ["-c", "echo one; sleep 0.3; echo two >&2; exit 3"]},
                progress_callback=seen)

    result = asyncio.run(run())
    body = result.structured_content
    assert not result.is_error and body is not None, result
    assert (body["status"], body["exit_code"], body["stdout"], body["stderr"]) == ("COMPLETED", 3, "one\n", "two\n")
    assert body["usage"]["cpu_time_ms"] >= 0 and body["final"] is True
    assert json.loads(result.content[0].text) == body  # type: ignore[union-attr]
    assert [message for _, message in progress] == ["stdout: one\n", "stderr: two\n"]
    assert progress[0][0] < progress[1][0]


@pytest.mark.parametrize("mode", [LEGACY, MODERN])
def test_a_cancelled_call_cancels_its_task_and_leaves_no_process(gateway: GatewayProcess, keys: dict[str, str],
                                                                 mode: str) -> None:
    marker = "371" if mode == LEGACY else "372"

    async def run() -> None:
        started = anyio.Event()

        async def seen(value: float, total: float | None, message: str | None) -> None:
            started.set()

        async with session(gateway, keys["alice"], mode) as client:
            async with anyio.create_task_group() as tg:
                async def call() -> None:
                    await client.call_tool("execute_command",
                                           {"command": "sh", "args": ["-c", f"echo up; exec sleep {marker}"]},
                                           progress_callback=seen)
                tg.start_soon(call)
                with anyio.fail_after(30):
                    await started.wait()
                tg.cancel_scope.cancel()
            await anyio.sleep(0.2)  # the session stays open while the gateway cancels

    asyncio.run(run())
    decision = wait_until(lambda: next(iter(events(gateway, event_type="decision", tool_name="execute_command",
                                                   command=f"sh -c echo up; exec sleep {marker}")), None),
                          what="the decision event")
    with rest(gateway, keys["alice"]) as http:
        final = wait_until(lambda: (b := http.get(f"/v1/tasks/{decision['task_id']}").json())["task_info"]["status"]
                           != "RUNNING" and b, timeout_s=15, what="the task's end")
    assert final["task_info"]["status"] == "CANCELLED"
    assert sleepers(marker) == []


def test_reads_writes_and_deletes_workspace_files(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    async def run() -> list[types.CallToolResult]:
        async with session(gateway, keys["alice"]) as client:
            return [
                await client.call_tool("write_file", {"workspace": "mcp-files", "path": "notes/a.txt",
                                                      "content": "héllo\n", "create_dirs": True}),
                await client.call_tool("read_file", {"workspace": "mcp-files", "path": "notes/a.txt"}),
                await client.call_tool("write_file", {"workspace": "mcp-files", "path": "blob.bin", "encoding": "base64",
                                                      "content": base64.b64encode(b"\xff\x00\xfe").decode()}),
                await client.call_tool("read_file", {"workspace": "mcp-files", "path": "blob.bin"}),
                await client.call_tool("execute_command", {"command": "cat", "args": ["notes/a.txt"],
                                                           "workspace": "mcp-files"}),
                await client.call_tool("delete_file", {"workspace": "mcp-files", "path": "notes", "recursive": True}),
                await client.call_tool("read_file", {"workspace": "mcp-files", "path": "notes/a.txt"}),
                await client.call_tool("read_file", {"workspace": "mcp-files", "path": "../escape"}),
            ]

    wrote, read, wrote_bin, read_bin, cat, deleted, gone, escape = asyncio.run(run())
    assert wrote.structured_content == {"path": "notes/a.txt", "bytes_written": 7}
    assert (read.structured_content or {})["content"] == "héllo\n"
    assert wrote_bin.structured_content == {"path": "blob.bin", "bytes_written": 3}
    assert (read_bin.structured_content or {})["encoding"] == "base64"
    assert base64.b64decode((read_bin.structured_content or {})["content"]) == b"\xff\x00\xfe"
    assert (cat.structured_content or {})["stdout"] == "héllo\n"
    assert deleted.structured_content == {"path": "notes", "deleted": True}
    assert error_code(gone) == 6001
    assert error_code(escape) == 3003


def test_another_tenants_task_is_not_found(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    with rest(gateway, keys["bob"]) as http:
        task_id = http.post("/v1/execute", params={"wait": 30}, json={"command": "true"}).json()["task_info"]["task_id"]

    async def run() -> list[types.CallToolResult]:
        async with session(gateway, keys["alice"]) as client:
            return [await client.call_tool(name, {"task_id": task_id}) for name in ("get_task", "cancel_task")] + [
                await client.call_tool("read_task_output", {"task_id": task_id})]

    assert [error_code(r) for r in asyncio.run(run())] == [6001, 6001, 6001]
    probes = events(gateway, event_type="not_found", task_id=task_id, principal="alice")
    assert len(probes) == 3 and all(e["cross_tenant"] and e["method"] == "tools/call" for e in probes)


def test_tasks_are_listed_and_read_back(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    async def run() -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
        async with session(gateway, keys["alice"]) as client:
            created = [(await client.call_tool("execute_command", {"command": "echo", "args": [str(i)]}))
                       .structured_content or {} for i in range(3)]
            output = (await client.call_tool("read_task_output", {"task_id": created[0]["task_id"]}))
            past = (await client.call_tool("read_task_output", {"task_id": created[0]["task_id"],
                                                                "offset": output.structured_content["next_offset"]}))
            assert past.structured_content == {"task_id": created[0]["task_id"], "entries": [],
                                               "next_offset": output.structured_content["next_offset"],
                                               "complete": True}
            for token in ("garbage", "9999999999999999999.task-" + "0" * 32):
                assert error_code(await client.call_tool("list_tasks", {"page_token": token})) == 2003
            pages, token = [], None
            while True:
                args: dict[str, Any] = {"limit": 2, **({"page_token": token} if token else {})}
                page = (await client.call_tool("list_tasks", args)).structured_content or {}
                pages += page["tasks"]
                token = page["next_page_token"]
                if token is None:
                    break
            return created, output.structured_content or {}, pages

    created, output, listed = asyncio.run(run())
    assert output["entries"][0] == {"offset": 0, "stream": "stdout", "text": "0\n"}
    assert output["complete"] and output["entries"][-1]["stream"] == "exit"
    ids = [t["task_id"] for t in listed]
    assert ids[:3] == [c["task_id"] for c in reversed(created)]  # newest first
    assert len(ids) == len(set(ids))
    assert all(not e["task_id"] or e["principal"] == "alice" for e in events(gateway, event_type="decision")
               if e["task_id"] in ids)


def test_arguments_outside_the_schema_are_refused_with_the_project_code(gateway: GatewayProcess,
                                                                        keys: dict[str, str]) -> None:
    async def run() -> list[types.CallToolResult]:
        async with session(gateway, keys["alice"]) as client:
            return [await client.call_tool("execute_command", {"args": ["x"]}),
                    await client.call_tool("execute_command", {"command": "echo", "bogus": 1}),
                    await client.call_tool("get_task", {"task_id": "nope"}),
                    await client.call_tool("execute_command", {"command": "sudo", "args": ["id"]})]

    missing, unknown, malformed, denied = asyncio.run(run())
    assert (error_code(missing), error_code(unknown), error_code(malformed)) == (2002, 2001, 2001)
    assert error_code(denied) == 3001  # policy


def test_an_unknown_tool_is_a_protocol_error(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    async def run() -> MCPError | None:
        async with session(gateway, keys["alice"]) as client:
            try:
                await client.call_tool("no_such_tool", {})
            except MCPError as exc:
                return exc
        return None

    error = asyncio.run(run())
    assert error is not None and error.code == types.INVALID_PARAMS and "Unknown tool" in error.error.message


# -- HTTP authorization (MCP 2025-11-25 "Authorization", RFC 9728, RFC 6750) ---------------

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _challenge(response: httpx.Response) -> str:
    return response.headers.get("www-authenticate", "")


def test_no_or_a_bad_credential_gets_401_naming_the_resource_metadata(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        missing = http.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        bad = http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": "Bearer mgw_wrong"})
        assert missing.status_code == bad.status_code == 401
        assert missing.json()["error"]["code"] == 1001
        url = f"{gateway.http_url}/.well-known/oauth-protected-resource/mcp"
        assert _challenge(missing) == f'Bearer resource_metadata="{url}"'
        assert _challenge(bad) == f'Bearer resource_metadata="{url}", error="invalid_token"'
        metadata = http.get(url)
    assert metadata.status_code == 200
    document = metadata.json()
    assert document["resource"] == f"{gateway.http_url}/mcp"
    assert "tasks:execute" in document["scopes_supported"] and document["bearer_methods_supported"] == ["header"]
    failures = events(gateway, event_type="auth_failure", method="POST /mcp")
    assert {e["auth_reason"] for e in failures} >= {"missing_credentials", "malformed_api_key"}

    async def sdk() -> None:
        async with session(gateway, None) as client:
            await client.list_tools()

    with pytest.raises(BaseException):  # noqa: B017 - the SDK raises its own group; the status is checked above
        asyncio.run(sdk())


def test_a_missing_scope_gets_403_naming_it(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "execute_command", "arguments": {"command": "true"}}}
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        refused = http.post("/mcp", json=call, headers={**MCP_HEADERS, "Authorization": f"Bearer {keys['reader']}"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == 1003
    url = f"{gateway.http_url}/.well-known/oauth-protected-resource/mcp"
    assert _challenge(refused) == f'Bearer error="insufficient_scope", scope="tasks:execute", resource_metadata="{url}"'
    assert events(gateway, event_type="auth_failure", principal="reader", auth_reason="missing_scope")

    async def sdk() -> tuple[types.CallToolResult, Any]:
        async with session(gateway, keys["reader"]) as client:
            allowed = await client.call_tool("list_tasks", {})
            try:
                await client.call_tool("execute_command", {"command": "true"})
            except BaseException as exc:  # noqa: B036 - whatever the SDK makes of the 403
                return allowed, exc
            return allowed, None

    allowed, refusal = asyncio.run(sdk())
    assert not allowed.is_error and refusal is not None


def test_a_session_answers_only_the_principal_that_opened_it(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        opened = http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {keys['alice']}"})
        assert opened.status_code == 200, opened.text
        sid = opened.headers["mcp-session-id"]
        base = {**MCP_HEADERS, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                  headers={**base, "Authorization": f"Bearer {keys['alice']}"})
        stolen = http.post("/mcp", json=list_tools, headers={**base, "Authorization": f"Bearer {keys['bob']}"})
        own = http.post("/mcp", json=list_tools, headers={**base, "Authorization": f"Bearer {keys['alice']}"})
    assert stolen.status_code == 404
    assert own.status_code == 200 and "execute_command" in own.text


def test_dns_rebinding_protection_and_the_exact_route(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    auth = {**MCP_HEADERS, "Authorization": f"Bearer {keys['alice']}"}
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        rebound = http.post("/mcp", json=INITIALIZE, headers={**auth, "Host": "evil.example"})
        foreign = http.post("/mcp", json=INITIALIZE, headers={**auth, "Origin": "http://evil.example"})
        local = http.post("/mcp", json=INITIALIZE, headers={**auth, "Origin": gateway.http_url})
        slash = http.post("/mcp/", json=INITIALIZE, headers=auth)
        put = http.put("/mcp", json=INITIALIZE, headers=auth)
    assert (rebound.status_code, foreign.status_code, local.status_code) == (421, 403, 200)
    # /mcp itself answers (no redirect to /mcp/); like every route, /mcp/ points back at it.
    assert slash.status_code == 307 and slash.headers["location"] == f"{gateway.http_url}/mcp"
    assert put.status_code == 405 and put.json()["error"]["code"] == 2001


def test_each_tool_call_is_one_audit_event_with_the_handshake(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    async def run() -> None:
        async with session(gateway, keys["alice"]) as client:
            done = (await client.call_tool("execute_command", {"command": "true"})).structured_content or {}
            await client.call_tool("get_task", {"task_id": done["task_id"]})
            await client.call_tool("read_task_output", {"task_id": done["task_id"]})
            await client.call_tool("list_tasks", {"limit": 1})
            await client.call_tool("write_file", {"workspace": "audit-ws", "path": "f", "content": "x"})
            await client.call_tool("read_file", {"workspace": "audit-ws", "path": "f"})
            await client.call_tool("delete_file", {"workspace": "audit-ws", "path": "f"})
            await client.call_tool("get_task", {"task_id": "task-" + "0" * 32})
            await client.call_tool("execute_command", {"command": 5})
            await client.call_tool("execute_command", {"command": "echo", "args": ["a\x00b"]})
            await client.call_tool("write_file", {"workspace": "audit-ws", "path": "f", "content": "!",
                                                  "encoding": "base64"})
            await client.call_tool("read_file", {"workspace": "audit-ws", "path": "f\x00"})
            await client.call_tool("list_tasks", {"page_token": "garbage"})

    before = len(gateway.audit_events())
    asyncio.run(run())
    calls = [e for e in gateway.audit_events()[before:] if e["method"] == "tools/call" and e["event_type"] != "task_end"]
    assert [e["tool_name"] for e in calls] == ["execute_command", "get_task", "read_task_output", "list_tasks",
                                               "write_file", "read_file", "delete_file", "get_task", "execute_command",
                                               "execute_command", "write_file", "read_file", "list_tasks"]
    assert [e["event_type"] for e in calls] == ["decision", "tool_call", "tool_call", "tool_call", "file", "file",
                                                "file", "not_found", "invalid_request", "invalid_request",
                                                "invalid_request", "invalid_request", "invalid_request"]
    assert [e.get("error_code") for e in calls][-5:] == [2001, 2001, 2003, 2001, 2003]
    assert [e["tool_invoke_count"] for e in calls] == list(range(1, 14))
    assert len({e["jsonrpc_id"] for e in calls}) == 13
    assert {(e["session_id"], e["transport"], e["protocol_version"], e["client_name"], e["client_version"])
            for e in calls} == {(calls[0]["session_id"], "mcp", "2025-11-25", "e2e-agent", "9.9")}
    assert not calls[0]["session_id"].startswith("conn-")  # the MCP session


def test_one_principal_cannot_hold_every_session(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    auth = {**MCP_HEADERS, "Authorization": f"Bearer {keys['dave']}"}
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        opened = [http.post("/mcp", json=INITIALIZE, headers=auth) for _ in range(SESSIONS)]
        assert [r.status_code for r in opened] == [200] * SESSIONS
        refused = http.post("/mcp", json=INITIALIZE, headers=auth)
        other = http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {keys['bob']}"})
        closed = http.delete("/mcp", headers={**auth, "mcp-session-id": opened[0].headers["mcp-session-id"],
                                              "mcp-protocol-version": "2025-11-25"})
        again = http.post("/mcp", json=INITIALIZE, headers=auth)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == 4290 and "Retry-After" in refused.headers
    assert other.status_code == 200 and closed.status_code == 200 and again.status_code == 200


def test_a_sessionless_call_cannot_pick_its_session(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    """2026-07-28 has no sessions: a Mcp-Session-Id the caller sends there is no session the
    SDK checked, so its events carry the connection, not the name it chose."""
    async def run() -> None:
        headers = {"Authorization": f"Bearer {keys['alice']}", "Mcp-Session-Id": "victim-session"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http, Client(
                streamable_http_client(f"{gateway.http_url}/mcp", http_client=http), mode=MODERN, cache=None,
        ) as client:
            await client.call_tool("list_tasks", {"limit": 1})

    before = len(gateway.audit_events())
    asyncio.run(run())
    (event,) = [e for e in gateway.audit_events()[before:] if e["method"] == "tools/call"]
    assert event["protocol_version"] == MODERN and event["session_id"].startswith("conn-")


def test_tool_calls_and_sessions_are_counted(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    async def run() -> None:
        async with session(gateway, keys["alice"]) as client:
            await client.call_tool("list_tasks", {"limit": 1})
            await client.call_tool("get_task", {"task_id": "task-" + "f" * 32})

    asyncio.run(run())
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    calls = {(s.labels["tool"], s.labels["status"]): s.value for s in families["mcp_tool_calls"].samples
             if s.name == "mcp_tool_calls_total"}
    assert calls[("list_tasks", "ok")] >= 1 and calls[("get_task", "6001")] >= 1
    assert all(LABEL_VALUES["tool"].match(tool) and LABEL_VALUES["status"].match(status)  # type: ignore[union-attr]
               for tool, status in calls)
    assert families["mcp_sessions_open"].samples[0].value >= 1  # sessions earlier tests left open


# -- over stdio ------------------------------------------------------------------------------


def test_stdio_serves_the_same_calls(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    with rest(gateway, keys["bob"]) as http:
        bobs = http.post("/v1/execute", params={"wait": 30}, json={"command": "true"}).json()["task_info"]["task_id"]
    progress: list[str | None] = []

    async def run() -> dict[str, Any]:
        async def seen(value: float, total: float | None, message: str | None) -> None:
            progress.append(message)

        out: dict[str, Any] = {}
        async with stdio_session(gateway, keys["alice"]) as client:
            out["tools"] = [t.name for t in (await client.list_tools()).tools]
            out["run"] = await client.call_tool("execute_command", {"command": "sh", "args": ["-c", "echo via-stdio"]},
                                                progress_callback=seen)
            out["write"] = await client.call_tool("write_file", {"workspace": "stdio-ws", "path": "s", "content": "ok"})
            out["read"] = await client.call_tool("read_file", {"workspace": "stdio-ws", "path": "s"})
            out["other"] = await client.call_tool("get_task", {"task_id": bobs})
            started = anyio.Event()

            async def up(value: float, total: float | None, message: str | None) -> None:
                started.set()

            async with anyio.create_task_group() as tg:
                async def call() -> None:
                    await client.call_tool("execute_command",
                                           {"command": "sh", "args": ["-c", "echo up; exec sleep 373"]},
                                           progress_callback=up)
                tg.start_soon(call)
                with anyio.fail_after(30):
                    await started.wait()
                tg.cancel_scope.cancel()
            await anyio.sleep(0.5)
        return out

    out = asyncio.run(run())
    assert "execute_command" in out["tools"]
    assert (out["run"].structured_content or {})["stdout"] == "via-stdio\n" and progress == ["stdout: via-stdio\n"]
    assert (out["read"].structured_content or {})["content"] == "ok"
    assert error_code(out["other"]) == 6001
    decision = wait_until(lambda: next(iter(events(gateway, event_type="decision",
                                                   command="sh -c echo up; exec sleep 373")), None))
    with rest(gateway, keys["alice"]) as http:
        wait_until(lambda: http.get(f"/v1/tasks/{decision['task_id']}").json()["task_info"]["status"] == "CANCELLED",
                   timeout_s=15, what="the stdio-cancelled task's end")
    assert sleepers("373") == []
    assert decision["client_name"] == "e2e-agent"  # the agent's clientInfo, passed on by the bridge


def test_stdio_with_a_bad_credential_says_why(gateway: GatewayProcess) -> None:
    async def run() -> MCPError | None:
        async with stdio_session(gateway, "mgw_not-a-key") as client:
            try:
                await client.list_tools()
            except MCPError as exc:
                return exc
        return None

    error = asyncio.run(run())
    assert error is not None and error.code == types.INTERNAL_ERROR
    assert f"cannot use the gateway at {gateway.http_url}/mcp: HTTP 401: error 1001: malformed API key (Bearer " \
        "resource_metadata=" in error.error.message


def test_stdio_connects_again_once_the_gateway_answers(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    """A bridge started before its gateway (or across a restart) answers with the reason
    while it cannot connect, then connects on a later request."""
    target_host, target_port = gateway.http_url.removeprefix("http://").rsplit(":", 1)

    async def run() -> tuple[MCPError | None, list[str]]:
        listening = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        listening.close()  # a port with nothing behind it, for now
        await listening.wait_closed()

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(target_host, int(target_port))

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        params = StdioServerParameters(command=str(GATEWAY_BIN), args=[
            "mcp-stdio", "--url", f"http://127.0.0.1:{port}"], env={"MCP_GATEWAY_TOKEN": keys["alice"]})
        async with Client(params, mode=LEGACY, client_info=AGENT, cache=None) as client:
            try:
                await client.list_tools()
                down = None
            except MCPError as exc:
                down = exc
            proxy = await asyncio.start_server(forward, "127.0.0.1", port)
            try:
                await asyncio.sleep(1.1)  # the bridge tries again at most once a second
                names = [t.name for t in (await client.list_tools()).tools]
            finally:
                proxy.close()
        return down, names

    down, names = asyncio.run(run())
    assert down is not None and "cannot use the gateway at http://127.0.0.1:" in down.error.message
    assert "execute_command" in names


def test_stdio_refuses_to_send_a_token_in_clear_off_this_host() -> None:
    refused = subprocess.run([str(GATEWAY_BIN), "mcp-stdio", "--url", "http://gw.example.com", "--token", "mgw_x"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "refusing to send the token in clear to gw.example.com" in refused.stderr


def test_stdio_passes_on_what_the_gateway_refused(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    async def run() -> tuple[types.CallToolResult, MCPError | None]:
        async with stdio_session(gateway, keys["reader"]) as client:
            allowed = await client.call_tool("list_tasks", {})
            try:
                await client.call_tool("execute_command", {"command": "true"})
            except MCPError as exc:
                return allowed, exc
            return allowed, None

    allowed, refused = asyncio.run(run())
    assert not allowed.is_error
    assert refused is not None and "refused the call: HTTP 403: error 1003: missing scope tasks:execute" in \
        refused.error.message


def test_stdio_writes_nothing_but_protocol_to_stdout(gateway: GatewayProcess, keys: dict[str, str]) -> None:
    lines = [json.dumps(INITIALIZE), json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
             json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})]
    proc = subprocess.Popen([str(GATEWAY_BIN), "mcp-stdio", "--url", gateway.http_url, "--token", keys["alice"]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n".join(lines) + "\n")
    proc.stdin.flush()
    replies = [json.loads(proc.stdout.readline()) for _ in range(2)]  # every line is a JSON-RPC message
    proc.stdin.close()  # how a client ends a stdio server
    proc.stdin = None  # (communicate() would flush it)
    rest_of_stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert rest_of_stdout == ""
    assert [r.get("id") for r in replies] == [1, 2] and all(r["jsonrpc"] == "2.0" for r in replies)
    assert len(replies[1]["result"]["tools"]) == 8


# -- the MCP Inspector CLI ------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                    reason="Node (with npm, which installs it) is absent: the MCP Inspector CLI needs it")
def test_the_mcp_inspector_cli_lists_and_calls_execute_command(gateway: GatewayProcess, keys: dict[str, str],
                                                                tmp_path: Path) -> None:
    assert INSPECTOR.exists(), "the test setup installs @modelcontextprotocol/inspector (scripts/setup.sh --test)"
    base = [str(INSPECTOR), "--cli", f"{gateway.http_url}/mcp", "--transport", "http",
            "--header", f"Authorization: Bearer {keys['alice']}"]
    env = {**os.environ, "HOME": str(tmp_path)}  # it writes ~/.mcp-inspector
    listed = subprocess.run([*base, "--method", "tools/list"], capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "execute_command" in {t["name"] for t in json.loads(listed.stdout)["tools"]}
    called = subprocess.run([*base, "--method", "tools/call", "--tool-name", "execute_command",
                             "--tool-arg", "command=echo", "--tool-arg", 'args=["from-inspector"]'],
                            capture_output=True, text=True, timeout=120, env=env)
    assert called.returncode == 0, called.stderr
    result = json.loads(called.stdout)
    assert result["structuredContent"]["stdout"] == "from-inspector\n" and not result.get("isError")
    assert events(gateway, event_type="decision", command="echo from-inspector", transport="mcp")
