"""Audit log: schema derived from the one field table, hash chain, redaction, fail-closed sink."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gateway.audit.fields import FIELDS, json_schema
from gateway.audit.log import AuditError, AuditLog, FileSink, args_sha256, redact_command, verify_chain
from gateway.models import Principal, RequestContext

REPO = Path(__file__).resolve().parents[2]
CTX = RequestContext(
    transport="grpc", method="ExecuteCommand", client_addr="ipv4:127.0.0.1:5000", request_id="r1",
    session_id="ipv4:127.0.0.1:5000", server_host="127.0.0.1", server_port=8081, client_process="grpcurl/1.9.3",
)
ALICE = Principal(id="alice", tenant="t1", roles=("user",), scopes=("tasks:execute",), auth_scheme="none")


def test_schema_file_is_derived_from_field_table() -> None:
    on_disk = json.loads((REPO / "docs" / "schema" / "mcp_audit_v1.json").read_text())
    assert on_disk == json_schema(), "run: python scripts/gen_schema.py"
    jsonschema.Draft202012Validator.check_schema(on_disk)
    assert len({f.name for f in FIELDS}) == len(FIELDS)


def test_events_validate_and_chain(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path / "a.jsonl"))
    log.emit("decision", CTX, ALICE, decision="allow", tool_invoke_count=1, command="echo hi",
             command_sha256="0" * 64, args_sha256=args_sha256(["hi"]))
    log.emit("task_end", CTX, ALICE, task_id="task-" + "a" * 32, exit_code=0, status="COMPLETED", duration_ms=5)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    validator = jsonschema.Draft202012Validator(json_schema())
    for event in events:
        validator.validate(event)
    assert [e["seq"] for e in events] == [1, 2]
    assert events[0]["prev_hash"] == "0" * 64
    assert verify_chain(events) == 2


def test_chain_continues_after_restart_and_detects_tampering(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    AuditLog(FileSink(path)).emit("decision", CTX, ALICE, decision="deny")
    AuditLog(FileSink(path)).emit("decision", CTX, ALICE, decision="allow")
    events = [json.loads(x) for x in path.read_text().splitlines()]
    assert verify_chain(events) == 2 and events[1]["seq"] == 2
    events[0]["decision"] = "allow"
    with pytest.raises(ValueError, match="seq=1"):
        verify_chain(events)
    with pytest.raises(ValueError, match="does not follow"):
        verify_chain([events[1]] + [json.loads(path.read_text().splitlines()[0])])


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path / "a.jsonl"))
    with pytest.raises(AuditError, match="unknown audit fields"):
        log.emit("decision", CTX, ALICE, password="x")


def test_sink_failure_raises_audit_error(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "a.jsonl")
    log = AuditLog(sink)
    sink.close()  # every later write fails with EBADF
    with pytest.raises(AuditError, match="audit sink 'file' failed"):
        log.emit("decision", CTX, ALICE, decision="allow")


def test_torn_last_line_refuses_to_continue_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"seq": 1, "hash": "ab"')
    with pytest.raises(AuditError, match="malformed"):
        AuditLog(FileSink(path))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--password", "hunter2", "x"], "tool --password *** x"),
        (["API_KEY=abc123"], "tool API_KEY=***"),
        (["token: zzz"], "tool token: ***"),
        (["https://bob:s3cret@example.com/x"], "tool https://bob:***@example.com/x"),
        (["-H", "Authorization: Bearer abc.def"], "tool -H Authorization: ***"),
        (["plain", "words"], "tool plain words"),
    ],
)
def test_redaction(args: list[str], expected: str) -> None:
    assert redact_command("tool", args) == expected


def test_redaction_truncates() -> None:
    assert len(redact_command("echo", ["x" * 5000])) == 1024


def test_an_event_without_principal_must_name_who_failed(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path / "a.jsonl"))
    with pytest.raises(AuditError, match="missing audit fields"):
        log.emit("auth_failure", CTX, None, auth_reason="expired")

    event = log.emit("auth_failure", CTX, None, principal="unauthenticated", tenant="unknown",
                     auth_scheme="bearer", auth_reason="expired", credential_sha256="f" * 64, error_code=1002)
    jsonschema.Draft202012Validator(json_schema()).validate(event)
    assert event["seq"] == 1  # the refused event took no place in the chain
