"""Audit log: schema derived from the one field table, hash chain, redaction, fail-closed sink."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import types
from pathlib import Path

import jsonschema
import pytest
from prometheus_client import REGISTRY

from gateway.audit import log as audit_log
from gateway.audit.fields import json_schema
from gateway.audit.chain import verify_chain
from gateway.audit.log import AuditError, AuditLog, args_sha256, redact_command
from gateway.audit.sinks import FileSink
from gateway.models import Principal, RequestContext

REPO = Path(__file__).resolve().parents[2]
CTX = RequestContext(
    transport="grpc", method="ExecuteCommand", client_addr="ipv4:127.0.0.1:5000", request_id="r1",
    session_id="ipv4:127.0.0.1:5000", server_host="127.0.0.1", server_port=8081, client_process="grpcurl/1.9.3",
)
ALICE = Principal(id="alice", tenant="t1", roles=("user",), scopes=("tasks:execute",), auth_scheme="none")


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


def test_malformed_last_line_refuses_to_continue_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"seq": 1, "hash": "ab"\n')  # a whole line, edited: not ours to repair
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


# -- a full disk: a line is whole or absent, the chain advances only past written events --


class FullDisk:
    """``os.write`` for files under ``root`` as on a filesystem with ``room`` bytes left:
    a write that does not fit writes what fits and returns the short count, the next one
    fails with ENOSPC (what write(2) does when the disk fills mid-line). Every other
    descriptor writes as usual."""

    def __init__(self, root: Path, room: int) -> None:
        self.root, self.room, self._write = str(root), room, os.write

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(self.root):
            return self._write(fd, data)
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self._write(fd, bytes(data[: self.room]))
        self.room -= n
        return n


class Clock:
    """``time`` for gateway.audit.log with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def time_ns() -> int:
        return 1_700_000_000_000_000_000


def _failed_count() -> float:
    return REGISTRY.get_sample_value("mcp_audit_events_total", {"sink": "file", "result": "failed"}) or 0.0


def _whole_lines(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"torn tail: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    full = FullDisk(tmp_path, room=10**9)
    monkeypatch.setattr(os, "write", full.write)
    return full


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(audit_log, "time", types.SimpleNamespace(monotonic=fake.monotonic, time_ns=fake.time_ns, perf_counter=time.perf_counter))
    return fake


def test_a_write_cut_short_by_a_full_disk_leaves_the_last_whole_line_and_the_chain_continues(
    tmp_path: Path, disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(FileSink(path))
    first = log.emit("decision", CTX, ALICE, decision="allow")
    size = path.stat().st_size
    failed_before = _failed_count()
    disk.room = 210  # part of the next line fits, then ENOSPC
    with caplog.at_level(logging.ERROR, logger="gateway.audit"), pytest.raises(AuditError, match="No space left"):
        log.emit("decision", CTX, ALICE, decision="allow", command="x" * 900)
    assert path.stat().st_size == size  # the 210 bytes are gone again
    assert _failed_count() == failed_before + 1
    assert [r.levelname for r in caplog.records if r.name == "gateway.audit"] == ["ERROR"]
    assert "No space left on device" in caplog.text

    disk.room = 10**9
    second = log.emit("decision", CTX, ALICE, decision="deny")
    events = _whole_lines(path)
    assert [e["seq"] for e in events] == [1, 2, 3]  # the refused event took no place in the chain
    assert second["prev_hash"] == first["hash"]
    outage = events[2]  # and the trail says a call was refused, by which sink, for how long
    assert (outage["event_type"], outage["audit_sink"], outage["failed_events"], outage["error_code"]) == (
        "audit_outage", "file", 1, 5001)
    assert verify_chain(events) == 3


def test_a_failed_fsync_takes_the_line_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(FileSink(path, fsync=True))
    log.emit("decision", CTX, ALICE, decision="allow")

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(AuditError, match="Input/output error"):
        log.emit("decision", CTX, ALICE, decision="allow")
    monkeypatch.undo()
    log.emit("decision", CTX, ALICE, decision="deny")
    assert verify_chain(_whole_lines(path)) == 3  # allow, deny, the outage


def test_an_undo_that_fails_is_done_before_the_next_line(
    tmp_path: Path, disk: FullDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(FileSink(path))
    log.emit("decision", CTX, ALICE, decision="allow")
    real_ftruncate = os.ftruncate

    def broken(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "ftruncate", broken)
    disk.room = 100
    with pytest.raises(AuditError):
        log.emit("decision", CTX, ALICE, decision="allow")
    disk.room = 10**9
    with pytest.raises(AuditError, match="Input/output error"):  # the torn tail is still there
        log.emit("decision", CTX, ALICE, decision="allow")
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    log.emit("decision", CTX, ALICE, decision="deny")
    events = _whole_lines(path)
    assert verify_chain(events) == 3
    assert (events[-1]["event_type"], events[-1]["failed_events"]) == ("audit_outage", 2)


def test_health_fails_with_the_sink_and_recovers_by_probe_or_write(
    tmp_path: Path, disk: FullDisk, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(FileSink(path))
    assert log.health() == audit_log.SinkHealth("file", True)
    disk.room = 0
    caplog.set_level(logging.INFO, logger="gateway.audit")
    for _ in range(5):
        with pytest.raises(AuditError):
            log.emit("decision", CTX, ALICE, decision="allow")
    health = log.health()  # the probe cannot write either
    assert (health.healthy, health.sink, health.detail, health.failed_events) == (
        False, "file", "No space left on device", 5)
    assert health.failing_since_ns == Clock.time_ns()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once per 10 s ...
    clock.now += 10
    with pytest.raises(AuditError):
        log.emit("decision", CTX, ALICE, decision="allow")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "4 more failures" in errors[1]  # ... with the count of the rest

    assert not log.health().healthy  # probed now: still full
    disk.room = 10**9  # space returns while no call comes
    assert not log.health().healthy  # probed less than a second ago
    clock.now += 1
    assert log.health().healthy
    assert "after 6 failed events" in caplog.records[-1].getMessage()
    assert not list(tmp_path.glob(".*probe*"))  # the probe file is removed
    [outage] = _whole_lines(path)  # the probe never touched the trail: only the outage's record is there
    assert (outage["event_type"], outage["failed_events"], outage["outage_ms"]) == ("audit_outage", 6, 0)

    disk.room = 0
    with pytest.raises(AuditError):
        log.emit("decision", CTX, ALICE, decision="allow")
    disk.room = 10**9
    log.emit("decision", CTX, ALICE, decision="deny")  # a real write recovers it too
    assert log.health().healthy
    events = _whole_lines(path)
    assert [(e["event_type"], e.get("failed_events")) for e in events] == [
        ("audit_outage", 6), ("decision", None), ("audit_outage", 1)]
    assert verify_chain(events) == 3


def test_health_never_waits_for_a_writer(tmp_path: Path, disk: FullDisk, clock: Clock) -> None:
    log = AuditLog(FileSink(tmp_path / "a.jsonl"))
    disk.room = 0
    with pytest.raises(AuditError):
        log.emit("decision", CTX, ALICE, decision="allow")
    disk.room = 10**9
    clock.now += 1
    with log._lock:  # a write in progress: no probe now, the known state is answered
        assert not log.health().healthy
    assert log.health().healthy


def test_a_torn_tail_found_at_open_is_cut_and_the_chain_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(FileSink(path))
    log.emit("decision", CTX, ALICE, decision="allow")
    last = log.emit("decision", CTX, ALICE, decision="deny")
    whole = path.stat().st_size
    with open(path, "ab") as fh:  # a crash in the middle of the third write
        fh.write(b'{"schema_version":"1","seq":3,"prev_ha')
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        log = AuditLog(FileSink(path))
    assert path.stat().st_size == whole
    assert "38 bytes of a torn line" in caplog.text
    event = log.emit("decision", CTX, ALICE, decision="allow")
    assert (event["seq"], event["prev_hash"]) == (3, last["hash"])
    assert verify_chain(_whole_lines(path)) == 3


def test_a_file_that_is_only_a_torn_line_starts_a_new_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"seq": 1, "hash": "ab"')
    event = AuditLog(FileSink(path)).emit("decision", CTX, ALICE, decision="deny")
    assert (event["seq"], event["prev_hash"]) == (1, "0" * 64)
    assert verify_chain(_whole_lines(path)) == 1


def test_a_deferred_event_is_written_first_once_the_sink_recovers(
    tmp_path: Path, disk: FullDisk, clock: Clock
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(FileSink(path))
    log.emit("decision", CTX, ALICE, decision="allow", task_id="task-" + "a" * 32)
    disk.room = 0
    with pytest.raises(AuditError):
        log.emit("task_end", CTX, ALICE, defer=True, task_id="task-" + "a" * 32, status="FAILED", error_code=5002)
    with pytest.raises(AuditError):  # not deferred: refused, and behind the waiting event
        log.emit("decision", CTX, ALICE, decision="deny")
    health = log.health()
    assert (health.healthy, health.deferred_events, health.failed_events) == (False, 1, 2)
    disk.room = 10**9
    clock.now += 1
    assert log.health() == audit_log.SinkHealth("file", True)  # the probe wrote the waiting event
    log.emit("decision", CTX, ALICE, decision="deny")
    events = _whole_lines(path)
    assert [(e["event_type"], e.get("error_code")) for e in events] == [
        ("decision", None), ("audit_outage", 5001), ("task_end", 5002), ("decision", None)]
    assert verify_chain(events) == 4
