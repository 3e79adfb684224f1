"""The MCP edge's pure parts: the generated tools table, DNS-rebinding lists derived from
the server's own host settings, the scope a raw tools/call needs, and result cutting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.edges.mcp_docs import render
from gateway.edges.mcp_server import (
    TOOLS,
    _cut,
    _origin_allowed,
    _result_bytes,
    _rpc_call,
    _task_result,
    transport_security,
)
from gateway.models import ResourceUsage, TaskRecord, TaskResult, TaskStatus, TaskType

REPO = Path(__file__).resolve().parent.parent.parent
#: A non-loopback bind needs credentials and TLS configured (Settings refuses one without).
TLS = {"terminated_upstream": True}
KEYS = {"api_keys": [{"hash": "sha256:" + "0" * 64, "principal": "p", "tenant": "t", "scopes": ["tasks:read"]}]}


def test_the_tools_table_of_the_docs_is_current() -> None:
    for path, text in render(REPO).items():
        assert path.read_text() == text, f"{path} is stale: run .venv/bin/python scripts/gen_mcp_docs.py"


def test_every_tool_has_schemas_a_known_scope_and_one_name() -> None:
    names = [tool.name for tool in TOOLS]
    assert len(names) == len(set(names))
    for tool in TOOLS:
        definition = tool.definition()
        assert definition.input_schema["type"] == "object" and definition.input_schema.get("additionalProperties") is False
        assert definition.output_schema is not None and definition.output_schema["type"] == "object"
        assert tool.scope in {"tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"}
        assert not (tool.read_only and tool.destructive)


@pytest.mark.parametrize(("host", "hosts", "origins_sample"), [
    ("127.0.0.1", ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"],
     "http://localhost:*"),
    ("10.1.2.3", ["10.1.2.3", "10.1.2.3:*"], "https://10.1.2.3:*"),
    ("fd00::5", ["[fd00::5]", "[fd00::5]:*"], "http://[fd00::5]:*"),
])
def test_dns_rebinding_lists_follow_the_bind_address(host: str, hosts: list[str], origins_sample: str) -> None:
    settings = Settings(host=host, auth=KEYS, tls=TLS)
    security = transport_security(settings)
    assert security.enable_dns_rebinding_protection
    assert security.allowed_hosts == hosts and origins_sample in security.allowed_origins


def test_a_wildcard_bind_checks_host_only_when_the_operator_names_the_service() -> None:
    unnamed = transport_security(Settings(host="0.0.0.0", auth=KEYS, tls=TLS))
    assert not unnamed.enable_dns_rebinding_protection  # McpHttpApp still refuses unlisted Origins
    named = transport_security(Settings(host="0.0.0.0", auth=KEYS, tls=TLS, mcp={
        "allowed_hosts": ["gw.example.com"], "allowed_origins": ["https://app.example.com"]}))
    assert named.enable_dns_rebinding_protection
    assert (named.allowed_hosts, named.allowed_origins) == (["gw.example.com"], ["https://app.example.com"])


@pytest.mark.parametrize(("body", "call"), [
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "execute_command"}},
     ("tools/call", "execute_command")),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["execute_command"]}, ("tools/call", None)),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}, ("tools/call", None)),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"name": "x"}}, ("initialize", None)),
    ({"jsonrpc": "2.0", "id": 1, "method": 7}, (None, None)),
    ([{"method": "tools/call", "params": {"name": "execute_command"}}], (None, None)),
])
def test_the_call_a_raw_body_makes(body: object, call: tuple[str | None, str | None]) -> None:
    assert _rpc_call(json.dumps(body).encode()) == call


@pytest.mark.parametrize("body", [b"\xff{not json", b"[" * 200_000, b""])
def test_what_does_not_parse_makes_no_call_the_sdk_answers_it(body: bytes) -> None:
    assert _rpc_call(body) == (None, None)


@pytest.mark.parametrize(("origin", "allowed"), [
    (None, True), ("https://app.example.com", True), ("http://localhost:8080", True), ("http://localhost:", False),
    ("http://localhost:80x", False), ("http://localhost.evil.com:80", False), ("https://evil.example", False),
])
def test_origins_match_exactly_or_by_any_port(origin: str | None, allowed: bool) -> None:
    assert _origin_allowed(origin, ["https://app.example.com", "http://localhost:*"]) is allowed


def test_a_task_result_fits_the_result_cap_whatever_the_output() -> None:
    usage = ResourceUsage(cpu_time_ms=1, max_memory_kb=1, io_read_bytes=0, io_write_bytes=0)
    result = TaskResult(exit_code=0, stdout="\x01" * 300_000, stderr="é" * 100_000, stdout_truncated=False,
                        stderr_truncated=False, limit_reason=None, resource_usage=usage, execution_time_ms=5)
    record = TaskRecord(task_id="task-" + "0" * 32, task_type=TaskType.COMMAND, status=TaskStatus.COMPLETED,
                        tenant="t", principal_id="p", command="x", args=(), metadata={}, created_at_ns=1,
                        decision_id="d", result=result)
    body = _task_result(record, 64 << 10)
    assert _result_bytes(body) <= 64 << 10
    assert body["stdout_truncated"] and body["stderr_truncated"] and body["stdout"].startswith("\x01")
    small = _task_result(record, 64 << 20)
    assert not small["stdout_truncated"] and small["stdout"] == result.stdout


def test_cut_keeps_whole_characters() -> None:
    assert _cut("héllo", 100) == ("héllo", False)
    assert _cut("héllo", 2) == ("h", True)  # "é" is two bytes: cut before it, not through it
    assert _cut("", 0) == ("", False)
