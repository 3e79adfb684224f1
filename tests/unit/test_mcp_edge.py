"""The MCP edge's pure parts: the generated tools table, DNS-rebinding lists derived from
the server's own host settings, the scope a raw tools/call needs, and result cutting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.edges.mcp_docs import render
from gateway.edges.mcp_server import TOOLS, _cut, _scope_needed, transport_security

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


@pytest.mark.parametrize(("body", "scope"), [
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "execute_command"}}, "tasks:execute"),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_file"}}, "files:write"),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_task"}}, "tasks:read"),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}}, None),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["execute_command"]}, None),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, None),
    ([{"method": "tools/call", "params": {"name": "execute_command"}}], None),
])
def test_the_scope_a_raw_tools_call_needs(body: object, scope: str | None) -> None:
    assert _scope_needed(json.dumps(body).encode()) == scope


def test_garbage_needs_no_scope_the_sdk_answers_it() -> None:
    assert _scope_needed(b"\xff{not json") is None


def test_cut_keeps_whole_characters() -> None:
    assert _cut("héllo", 100) == ("héllo", False)
    assert _cut("héllo", 2) == ("h", True)  # "é" is two bytes: cut before it, not through it
    assert _cut("", 0) == ("", False)
